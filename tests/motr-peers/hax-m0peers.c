/*
 * hax-m0peers: many Motr processes' HA links from one process, for measuring
 * hax on real Motr with as many links as a cluster gives it.
 *
 *   hax-m0peers HAX_ENDPOINT PROCESS_FID@LOCAL_ENDPOINT...
 *
 * For each argument it sets up what an m0d's HA side is (a net domain, a
 * request handler with the process fid, an RPC machine at the endpoint, an
 * m0_ha) and connects to hax: an entrypoint request with that process fid,
 * then an HA link. The connects run one after another; each prints
 *
 *   connected <fid> <microseconds of m0_ha_connect()>
 *
 * then `all connected <n>`. Every link answers hax's keepalive requests as
 * Motr's own handler does (motr/keepalive.c) and acknowledges every message.
 * At the end of standard input every link is flushed and disconnected, which
 * hax sees as the processes closing their links; `stopped` is printed last.
 * Motr's m0ham does the same for one fixed process fid (ha/ham.c); m0d does
 * it with a whole Motr instance per process, too heavy for a hundred.
 *
 * Errors are printed as `hax-m0peers error: ...`. Exit status: 0, 1 on a bad
 * argument, 2 when a link could not be set up.
 */
#include "module/instance.h"
#include "motr/init.h"
#include "net/net.h"
#include "net/buffer_pool.h"
#include "reqh/reqh.h"
#include "rpc/rpc_machine.h"
#include "rpc/rpc.h"
#include "ha/ha.h"
#include "ha/link.h"
#include "ha/msg.h"
#include "lib/atomic.h"
#include "lib/memory.h"
#include "lib/time.h"
#include "fid/fid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

struct peer {
	struct m0_fid             fid;
	const char               *endpoint;
	struct m0_net_domain      dom;
	struct m0_net_buffer_pool pool;
	struct m0_reqh            reqh;
	struct m0_rpc_machine     mach;
	struct m0_ha              ha;
	struct m0_ha_link        *link;
	bool                      ha_started;
};

static struct m0_atomic64 keepalive_counter;

static void peer_entrypoint_request(struct m0_ha *ha, const struct m0_ha_entrypoint_req *req,
				    const struct m0_uint128 *req_id)
{
	/* Nobody connects to a peer: hax never sends an entrypoint request. */
	(void)ha;
	(void)req;
	(void)req_id;
}

static void peer_entrypoint_replied(struct m0_ha *ha, struct m0_ha_entrypoint_rep *rep)
{
	(void)ha;
	(void)rep;
}

static void peer_msg_received(struct m0_ha *ha, struct m0_ha_link *hl, struct m0_ha_msg *msg,
			      uint64_t tag)
{
	(void)tag;
	if (msg->hm_data.hed_type == M0_HA_MSG_KEEPALIVE_REQ) {
		struct m0_ha_msg *rep;
		uint64_t rep_tag;
		M0_ALLOC_PTR(rep);
		if (rep != NULL) {
			*rep = (struct m0_ha_msg){
				.hm_time = m0_time_now(),
				.hm_data = {
					.hed_type = M0_HA_MSG_KEEPALIVE_REP,
					.u.hed_keepalive_rep = {
						.kap_id = msg->hm_data.u.hed_keepalive_req.kaq_id,
						.kap_counter =
							m0_atomic64_add_return(&keepalive_counter, 1),
					},
				},
			};
			m0_ha_send(ha, hl, rep, &rep_tag);
			m0_free(rep);
		}
	}
	m0_ha_delivered(ha, hl, msg);
}

static void peer_msg_is_delivered(struct m0_ha *ha, struct m0_ha_link *hl, uint64_t tag)
{
	(void)ha;
	(void)hl;
	(void)tag;
}

static void peer_msg_is_not_delivered(struct m0_ha *ha, struct m0_ha_link *hl, uint64_t tag)
{
	(void)ha;
	(void)hl;
	(void)tag;
}

static void peer_link_connected(struct m0_ha *ha, const struct m0_uint128 *req_id,
				struct m0_ha_link *hl)
{
	(void)ha;
	(void)req_id;
	(void)hl;
}

static void peer_link_reused(struct m0_ha *ha, const struct m0_uint128 *req_id,
			     struct m0_ha_link *hl)
{
	(void)ha;
	(void)req_id;
	(void)hl;
}

static void peer_link_absent(struct m0_ha *ha, const struct m0_uint128 *req_id)
{
	(void)ha;
	(void)req_id;
}

static void peer_link_is_disconnecting(struct m0_ha *ha, struct m0_ha_link *hl)
{
	m0_ha_disconnect_incoming(ha, hl);
}

static void peer_link_disconnected(struct m0_ha *ha, struct m0_ha_link *hl)
{
	(void)ha;
	(void)hl;
}

static const struct m0_ha_ops peer_ha_ops = {
	.hao_entrypoint_request = peer_entrypoint_request,
	.hao_entrypoint_replied = peer_entrypoint_replied,
	.hao_msg_received = peer_msg_received,
	.hao_msg_is_delivered = peer_msg_is_delivered,
	.hao_msg_is_not_delivered = peer_msg_is_not_delivered,
	.hao_link_connected = peer_link_connected,
	.hao_link_reused = peer_link_reused,
	.hao_link_absent = peer_link_absent,
	.hao_link_is_disconnecting = peer_link_is_disconnecting,
	.hao_link_disconnected = peer_link_disconnected,
};

/* The RPC side of one process, as m0ham sets up its own (ha/ham.c). */
static int peer_rpc_init(struct peer *p)
{
	int rc = m0_net_domain_init(&p->dom, m0_net_xprt_default_get());
	if (rc != 0)
		return rc;
	rc = m0_rpc_net_buffer_pool_setup(&p->dom, &p->pool,
					  m0_rpc_bufs_nr(M0_NET_TM_RECV_QUEUE_DEF_LEN, 1), 1);
	if (rc != 0)
		goto dom;
	rc = M0_REQH_INIT(&p->reqh, .rhia_dtm = (void *)1, .rhia_mdstore = (void *)1,
			  .rhia_fid = &p->fid);
	if (rc != 0)
		goto pool;
	m0_reqh_start(&p->reqh);
	rc = m0_rpc_machine_init(&p->mach, &p->dom, p->endpoint, &p->reqh, &p->pool,
				 M0_BUFFER_ANY_COLOUR, M0_RPC_DEF_MAX_RPC_MSG_SIZE,
				 M0_NET_TM_RECV_QUEUE_DEF_LEN);
	if (rc == 0)
		return 0;
	m0_reqh_services_terminate(&p->reqh);
	m0_reqh_fini(&p->reqh);
pool:
	m0_rpc_net_buffer_pool_cleanup(&p->pool);
dom:
	m0_net_domain_fini(&p->dom);
	return rc;
}

static void peer_rpc_fini(struct peer *p)
{
	m0_reqh_shutdown_wait(&p->reqh);
	m0_rpc_machine_fini(&p->mach);
	m0_reqh_services_terminate(&p->reqh);
	m0_reqh_fini(&p->reqh);
	m0_rpc_net_buffer_pool_cleanup(&p->pool);
	m0_net_domain_fini(&p->dom);
}

static int peer_connect(struct peer *p, const char *hax)
{
	int rc = peer_rpc_init(p);
	if (rc != 0) {
		fprintf(stderr, "hax-m0peers error: %s: RPC machine: %d\n", p->endpoint, rc);
		return rc;
	}
	struct m0_ha_cfg cfg = {
		.hcf_ops = peer_ha_ops,
		.hcf_rpc_machine = &p->mach,
		.hcf_reqh = &p->reqh,
		.hcf_addr = hax,
		.hcf_process_fid = p->fid,
	};
	rc = m0_ha_init(&p->ha, &cfg);
	if (rc == 0) {
		rc = m0_ha_start(&p->ha);
		if (rc == 0) {
			p->ha_started = true;
			p->link = m0_ha_connect(&p->ha);
			if (p->link != NULL)
				return 0;
			rc = -ECONNREFUSED;
			m0_ha_stop(&p->ha);
			p->ha_started = false;
		}
		m0_ha_fini(&p->ha);
	}
	fprintf(stderr, "hax-m0peers error: %s: HA connect to %s: %d\n", p->endpoint, hax, rc);
	peer_rpc_fini(p);
	return rc;
}

static void peer_disconnect(struct peer *p)
{
	m0_ha_flush(&p->ha, p->link);
	m0_ha_disconnect(&p->ha);
	m0_ha_stop(&p->ha);
	m0_ha_fini(&p->ha);
	peer_rpc_fini(p);
}

static long long elapsed_us(const struct timespec *t0)
{
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	return (long long)(t1.tv_sec - t0->tv_sec) * 1000000LL +
	       (t1.tv_nsec - t0->tv_nsec) / 1000;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s HAX_ENDPOINT PROCESS_FID@LOCAL_ENDPOINT...\n",
			argv[0]);
		return 1;
	}
	const char *hax = argv[1];
	int n = argc - 2;
	struct peer *peers = calloc((size_t)n, sizeof *peers);
	if (peers == NULL)
		return 2;
	for (int i = 0; i < n; i++) {
		char *arg = argv[i + 2];
		char *at = strchr(arg, '@');
		if (at == NULL) {
			fprintf(stderr, "hax-m0peers error: %s: not PROCESS_FID@ENDPOINT\n", arg);
			return 1;
		}
		*at = '\0';
		if (m0_fid_sscanf(arg, &peers[i].fid) != 0 ||
		    m0_fid_tget(&peers[i].fid) != 'r') {
			fprintf(stderr, "hax-m0peers error: %s: not a process fid\n", arg);
			return 1;
		}
		peers[i].endpoint = at + 1;
	}
	/* Each process's RPC machine holds a few dozen descriptors (libfabric's
	 * endpoints and pollers): the default limit of 1,024 stops at about 60. */
	struct rlimit nofile;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
		nofile.rlim_cur = nofile.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &nofile);
	}
	static struct m0 instance;
	int rc = m0_init(&instance);
	if (rc != 0) {
		fprintf(stderr, "hax-m0peers error: m0_init: %d\n", rc);
		return 2;
	}
	m0_atomic64_set(&keepalive_counter, 0);
	int connected = 0;
	for (; connected < n; connected++) {
		struct peer *p = &peers[connected];
		struct timespec t0;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		if (peer_connect(p, hax) != 0)
			break;
		printf("connected " FID_F " %lld\n", FID_P(&p->fid), elapsed_us(&t0));
		fflush(stdout);
	}
	if (connected == n) {
		printf("all connected %d\n", n);
		fflush(stdout);
		char line[256];
		while (fgets(line, sizeof line, stdin) != NULL)
			;
	}
	for (int i = 0; i < connected; i++)
		peer_disconnect(&peers[i]);
	printf("stopped\n");
	fflush(stdout);
	m0_fini();
	free(peers);
	return connected == n ? 0 : 2;
}
