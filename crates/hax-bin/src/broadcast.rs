//! HA state broadcasts: from object health updates to the notes Motr
//! processes get (with the services, drives, controllers, nodes and
//! enclosures they imply) and the configuration-tree states written to
//! Consul, then sent to the links and tracked to delivered / not delivered.
