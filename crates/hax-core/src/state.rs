//! HA object states and the enumerations carried by HA messages. Values are
//! Motr's; every conversion from a raw number is checked.

use std::fmt;

/// Raised when a raw number is outside an enumeration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} has no value {value}")]
pub struct OutOfRange {
    /// The enumeration.
    pub what: &'static str,
    /// The number found.
    pub value: u64,
}

macro_rules! raw_enum {
    ($(#[$m:meta])* $name:ident : $what:literal { $($(#[$vm:meta])* $v:ident = $n:literal => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name { $($(#[$vm])* $v = $n),+ }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The raw value.
            pub const fn raw(self) -> u32 { self as u32 }

            /// Motr's name of the value.
            pub const fn name(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }

            /// The value for a Motr name.
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$v),)+ _ => None }
            }
        }

        impl TryFrom<u64> for $name {
            type Error = OutOfRange;
            fn try_from(v: u64) -> Result<Self, OutOfRange> {
                match v { $($n => Ok($name::$v),)+ _ => Err(OutOfRange { what: $what, value: v }) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
    };
}

raw_enum! {
    /// `enum m0_ha_obj_state`: the state of a configuration object.
    HaState: "HA state" {
        /// Only in GET requests; never in a SET.
        Unknown = 0 => "M0_NC_UNKNOWN",
        /// Usable.
        Online = 1 => "M0_NC_ONLINE",
        /// Permanently failed. For a process fid sent to the self link, fences it.
        Failed = 2 => "M0_NC_FAILED",
        /// Temporarily unavailable.
        Transient = 3 => "M0_NC_TRANSIENT",
        /// Under SNS repair (pool, sdev, node or drive only).
        Repair = 4 => "M0_NC_REPAIR",
        /// Repair complete.
        Repaired = 5 => "M0_NC_REPAIRED",
        /// Under rebalance (pool, sdev, node or drive only).
        Rebalance = 6 => "M0_NC_REBALANCE",
        /// DTM recovery.
        DtmRecovering = 7 => "M0_NC_DTM_RECOVERING",
    }
}

raw_enum! {
    /// `enum m0_conf_ha_process_event`.
    ProcessEventKind: "process event" {
        #[allow(missing_docs)] Starting = 0 => "M0_CONF_HA_PROCESS_STARTING",
        #[allow(missing_docs)] Started = 1 => "M0_CONF_HA_PROCESS_STARTED",
        #[allow(missing_docs)] Stopping = 2 => "M0_CONF_HA_PROCESS_STOPPING",
        #[allow(missing_docs)] Stopped = 3 => "M0_CONF_HA_PROCESS_STOPPED",
        #[allow(missing_docs)] DtmRecovered = 4 => "M0_CONF_HA_PROCESS_DTM_RECOVERED",
    }
}

raw_enum! {
    /// `enum m0_conf_ha_process_type`.
    ProcessType: "process type" {
        #[allow(missing_docs)] Other = 0 => "M0_CONF_HA_PROCESS_OTHER",
        #[allow(missing_docs)] Kernel = 1 => "M0_CONF_HA_PROCESS_KERNEL",
        #[allow(missing_docs)] M0mkfs = 2 => "M0_CONF_HA_PROCESS_M0MKFS",
        #[allow(missing_docs)] M0d = 3 => "M0_CONF_HA_PROCESS_M0D",
    }
}

raw_enum! {
    /// `enum m0_conf_ha_service_event`.
    ServiceEventKind: "service event" {
        #[allow(missing_docs)] Starting = 0 => "M0_CONF_HA_SERVICE_STARTING",
        #[allow(missing_docs)] Started = 1 => "M0_CONF_HA_SERVICE_STARTED",
        #[allow(missing_docs)] Stopping = 2 => "M0_CONF_HA_SERVICE_STOPPING",
        #[allow(missing_docs)] Stopped = 3 => "M0_CONF_HA_SERVICE_STOPPED",
        #[allow(missing_docs)] Failed = 4 => "M0_CONF_HA_SERVICE_FAILED",
    }
}

raw_enum! {
    /// `enum m0_conf_service_type`.
    ServiceType: "service type" {
        #[allow(missing_docs)] Unused = 0 => "M0_CST__UNUSED",
        #[allow(missing_docs)] Mds = 1 => "M0_CST_MDS",
        #[allow(missing_docs)] Ios = 2 => "M0_CST_IOS",
        #[allow(missing_docs)] Confd = 3 => "M0_CST_CONFD",
        #[allow(missing_docs)] Rms = 4 => "M0_CST_RMS",
        #[allow(missing_docs)] Stats = 5 => "M0_CST_STATS",
        #[allow(missing_docs)] Ha = 6 => "M0_CST_HA",
        #[allow(missing_docs)] Sss = 7 => "M0_CST_SSS",
        #[allow(missing_docs)] SnsRep = 8 => "M0_CST_SNS_REP",
        #[allow(missing_docs)] SnsReb = 9 => "M0_CST_SNS_REB",
        #[allow(missing_docs)] Addb2 = 10 => "M0_CST_ADDB2",
        #[allow(missing_docs)] Cas = 11 => "M0_CST_CAS",
        #[allow(missing_docs)] DixRep = 12 => "M0_CST_DIX_REP",
        #[allow(missing_docs)] DixReb = 13 => "M0_CST_DIX_REB",
        #[allow(missing_docs)] Ds1 = 14 => "M0_CST_DS1",
        #[allow(missing_docs)] Ds2 = 15 => "M0_CST_DS2",
        #[allow(missing_docs)] Fis = 16 => "M0_CST_FIS",
        #[allow(missing_docs)] Fdmi = 17 => "M0_CST_FDMI",
        #[allow(missing_docs)] Be = 18 => "M0_CST_BE",
        #[allow(missing_docs)] M0t1fs = 19 => "M0_CST_M0T1FS",
        #[allow(missing_docs)] Client = 20 => "M0_CST_CLIENT",
        #[allow(missing_docs)] Iscs = 21 => "M0_CST_ISCS",
        #[allow(missing_docs)] Dtm0 = 22 => "M0_CST_DTM0",
    }
}

raw_enum! {
    /// `ber_location` of a BE I/O error.
    BeLocation: "BE error location" {
        #[allow(missing_docs)] None = 0 => "M0_BE_LOC_NONE",
        #[allow(missing_docs)] Log = 1 => "M0_BE_LOC_LOG",
        #[allow(missing_docs)] Segment1 = 2 => "M0_BE_LOC_SEGMENT_1",
        #[allow(missing_docs)] Segment2 = 3 => "M0_BE_LOC_SEGMENT_2",
    }
}

raw_enum! {
    /// `enum m0_cm_op`: the copy-machine operation of an SNS error.
    CmOp: "copy machine operation" {
        #[allow(missing_docs)] Invalid = 0 => "CM_OP_INVALID",
        #[allow(missing_docs)] Repair = 1 => "CM_OP_REPAIR",
        #[allow(missing_docs)] Rebalance = 2 => "CM_OP_REBALANCE",
        #[allow(missing_docs)] RepairQuiesce = 3 => "CM_OP_REPAIR_QUIESCE",
        #[allow(missing_docs)] RebalanceQuiesce = 4 => "CM_OP_REBALANCE_QUIESCE",
        #[allow(missing_docs)] RepairResume = 5 => "CM_OP_REPAIR_RESUME",
        #[allow(missing_docs)] RebalanceResume = 6 => "CM_OP_REBALANCE_RESUME",
        #[allow(missing_docs)] RepairStatus = 7 => "CM_OP_REPAIR_STATUS",
        #[allow(missing_docs)] RebalanceStatus = 8 => "CM_OP_REBALANCE_STATUS",
        #[allow(missing_docs)] RepairAbort = 9 => "CM_OP_REPAIR_ABORT",
        #[allow(missing_docs)] RebalanceAbort = 10 => "CM_OP_REBALANCE_ABORT",
    }
}

impl ProcessEventKind {
    /// The HA state a process event implies (`ha/ha.h`).
    pub fn implied_state(self) -> HaState {
        match self {
            ProcessEventKind::Starting | ProcessEventKind::Stopping => HaState::Transient,
            ProcessEventKind::Started | ProcessEventKind::DtmRecovered => HaState::Online,
            ProcessEventKind::Stopped => HaState::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip() {
        for s in HaState::ALL {
            assert_eq!(HaState::try_from(u64::from(s.raw())), Ok(*s));
            assert_eq!(HaState::from_name(s.name()), Some(*s));
        }
        for s in ServiceType::ALL {
            assert_eq!(ServiceType::try_from(u64::from(s.raw())), Ok(*s));
        }
        assert_eq!(ServiceType::ALL.len(), 23);
        assert_eq!(CmOp::ALL.len(), 11);
    }

    #[test]
    fn out_of_range_is_an_error() {
        assert_eq!(
            HaState::try_from(8).unwrap_err().to_string(),
            "HA state has no value 8"
        );
        assert!(ProcessEventKind::try_from(5).is_err());
        assert!(ProcessType::try_from(u64::MAX).is_err());
        assert!(ServiceEventKind::try_from(5).is_err());
        assert!(BeLocation::try_from(4).is_err());
        assert!(CmOp::try_from(11).is_err());
        assert_eq!(HaState::from_name("online"), None);
    }

    #[test]
    fn process_events_imply_states() {
        assert_eq!(ProcessEventKind::Started.implied_state(), HaState::Online);
        assert_eq!(ProcessEventKind::Stopped.implied_state(), HaState::Failed);
        assert_eq!(
            ProcessEventKind::Stopping.implied_state(),
            HaState::Transient
        );
    }
}
