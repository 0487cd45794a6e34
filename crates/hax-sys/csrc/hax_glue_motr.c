/*
 * hax_glue_motr.c - hax_glue.h on Motr's real m0_halon_interface
 * (ha/halon/interface.h), built with feature "motr".
 *
 * What the glue adds to the interface:
 * - links are named by ids from a table (never reused), not by
 *   m0_ha_link pointers: a stale id gives HAX_E_NOLINK, never a use after
 *   free;
 * - received messages are tracked per link by tag, so delivered() needs only
 *   (link, tag) and a second or unknown tag gives HAX_E_NOTAG;
 * - the calls Motr would assert on are refused with the emulator's codes
 *   before they reach Motr (tags, NVEC rules, GET answers, failvec cookies,
 *   unknown request ids, disconnect order, the self-link fid table);
 * - one void *user, kept in the handle: Motr's callbacks carry none, and the
 *   interface is one per process, so the handle is global;
 * - stop() has a deadline: what the user leaves unanswered after it
 *   (received messages, entrypoint requests, disconnects) is answered by the
 *   glue, and stop() returns HAX_E_HANG;
 * - the client operations run spiel on the interface's own spiel instance;
 *   a start of rconfc returns at a deadline (Motr's own start waits for a
 *   confd quorum and the read lock for ever) while the start goes on, and
 *   stop() waits for client calls in progress, then stops rconfc before the
 *   interface.
 *
 * Locks: h->mu is never held across a call into Motr nor across a user
 * callback. A link whose hl is in use by a glue call (busy > 0) is handed to
 * Motr's disconnect only once the last such call is back, so hl stays valid
 * for every call the glue makes with it.
 */
#include "hax_glue.h"
#include "glue_check.h"

#include "addb2/global.h"
#include "cm/repreb/cm.h"
#include "conf/obj.h"
#include "conf/pvers.h"
#include "conf/rconfc.h"
#include "fid/fid.h"
#include "ha/halon/interface.h"
#include "ha/link.h"
#include "ha/msg.h"
#include "lib/locality.h"
#include "lib/memory.h"
#include "lib/thread.h"
#include "lib/time.h"
#include "lib/types.h"
#include "motr/version.h"
#include "net/buffer_pool.h"
#include "net/net.h"
#include "rpc/rpc_machine.h"
#include "spiel/spiel.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#define DEFAULT_STOP_TIMEOUT_MS 5000u
#define DEFAULT_RCONFC_TIMEOUT_MS 30000u
#define FIDTAB_MAX 0x1000u /* HALON_INTERFACE_NVEC_SIZE_MAX */
#define CONFD_MAX 64u
#define STR_MAX 255u

_Static_assert(sizeof(struct hax_fid) == sizeof(struct m0_fid), "hax_fid != m0_fid");
_Static_assert(sizeof(struct hax_u128) == sizeof(struct m0_uint128), "hax_u128 != m0_uint128");
_Static_assert(HAX_NOTES_MAX == M0_HA_STATE_UPDATE_LIMIT, "notes limit");
_Static_assert(HAX_NOTES_MAX == M0_HA_MSG_FAILURE_VEC_LIMIT, "failvec limit");
_Static_assert((int)HAX_MSG_SNS_ERR == (int)M0_HA_MSG_SNS_ERR, "message types");
_Static_assert((int)HAX_NC_DTM_RECOVERING == (int)M0_NC_DTM_RECOVERING, "HA states");
_Static_assert((int)HAX_CM_PAUSED == (int)CM_STATUS_PAUSED, "copy machine states");
_Static_assert((int)HAX_PVER_DAMAGED == (int)M0_CPS_DAMAGED, "pool version states");
_Static_assert(sizeof(struct hax_fs_stats) == sizeof(struct m0_fs_stats), "fs stats");

enum glue_state { S_INIT = 0, S_STARTING, S_WORKING, S_STOPPING };

/*
 * rconfc of the interface's spiel instance. STARTING outlives a start call
 * that returned -ETIMEDOUT: Motr cannot cancel a start (failing rconfc while
 * its read lock request waits asserts in the RM state machine), so the
 * start goes on and rconfc's own callbacks move it to ON or FAILED.
 */
enum rconfc_state { RC_OFF = 0, RC_STARTING, RC_ON, RC_FAILED, RC_STOPPING };

/* A received message not delivered yet: Motr's message stays valid until
 * delivered() is called for it. */
struct rx {
	uint64_t tag;
	const struct m0_ha_msg *msg;
};

struct get_rec {
	struct get_rec *next;
	uint64_t id;
	uint32_t nr;
	struct m0_fid fids[];
};

struct fvq_rec {
	struct fvq_rec *next;
	struct m0_cookie cookie;
};

struct glink {
	hax_link_id id;
	struct m0_ha_link *hl;
	bool self;
	bool disc_cb;       /* link_is_disconnecting has run (or begun) */
	bool disconnected;  /* disconnect() accepted */
	bool motr_disc;     /* m0_halon_interface_disconnect() called or due */
	unsigned busy;      /* glue calls using hl now */
	struct hax_fid process_fid;
	char ep[HAX_EP_MAX];
	struct rx *rx;      /* undelivered received messages, in tag order */
	size_t n_rx;
	size_t cap_rx;
	struct get_rec *gets;
	struct fvq_rec *fvqs;
};

enum req_state { R_PENDING = 1, R_REPLYING };

struct greq {
	struct greq *next;
	struct m0_uint128 id;
	enum req_state state;
	bool up;     /* entrypoint_request callback has begun */
	struct hax_fid process_fid;
	char ep[HAX_EP_MAX];
};

struct hax_glue {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t init_tid;
	struct m0_halon_interface *hi;
	enum glue_state state;
	struct hax_callbacks cbs;
	char local_ep[HAX_EP_MAX];
	hax_link_id next_link_id;
	struct glink **links;
	size_t n_links;
	size_t cap_links;
	struct greq *reqs;
	struct m0_fid fidtab[FIDTAB_MAX]; /* process fids Motr's hii_nvec holds */
	size_t fid_n;
	uint32_t stop_timeout_ms;
	bool stop_done;
	bool forced;
	pthread_t watchdog;
	pthread_t stopper;  /* runs m0_halon_interface_stop() */
	bool stopper_failed; /* it could not adopt its thread */
	bool cut_short;     /* stop() returned HAX_E_WITHHELD; Motr's stop goes on */
	size_t n_withheld;  /* entrypoint requests withheld while stopping */
	struct hax_fid own_fid;
	/* Client operations: the interface's spiel (set at start, on the init
	 * thread: Motr hands it only to one of its threads), rconfc's state and
	 * the client calls in progress (stop waits for them). */
	struct m0_spiel *spiel;
	enum rconfc_state rconfc;
	unsigned client_calls;
	uint32_t rconfc_timeout_ms;
	uint32_t receive_buffers; /* 0: Motr's own receive pool */
	uint64_t pool_trimmed_ms;  /* when the receive pool was last trimmed */
	uint64_t run; /* start() count: a call begun in an earlier run is over */
};

/* One interface per process (Motr's rule): callbacks find the handle here. */
static struct hax_glue *g_h;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static _Thread_local struct m0_thread *tl_adopted;
static _Thread_local unsigned tl_in_cb;

/* --- helpers ------------------------------------------------------------- */

#define FIDF "%#llx:%#llx"
#define FIDP(f) (unsigned long long)(f)->container, (unsigned long long)(f)->key

__attribute__((format(printf, 3, 4))) static void glog(hax_glue *h, int level, const char *fmt,
							...)
{
	void (*cb)(void *, int32_t, const char *) = h->cbs.log;
	if (cb == NULL)
		return;
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	tl_in_cb++;
	cb(h->cbs.user, level, buf);
	tl_in_cb--;
}

static bool fid_eq(const struct hax_fid *a, const struct hax_fid *b)
{
	return a->container == b->container && a->key == b->key;
}

static bool mfid_eq(const struct m0_fid *a, const struct m0_fid *b)
{
	return a->f_container == b->f_container && a->f_key == b->f_key;
}

static uint8_t fid_type(const struct hax_fid *f)
{
	return (uint8_t)(f->container >> 56);
}

static struct m0_fid to_m0_fid(const struct hax_fid *f)
{
	return (struct m0_fid){.f_container = f->container, .f_key = f->key};
}

static struct hax_fid to_hax_fid(const struct m0_fid *f)
{
	return (struct hax_fid){.container = f->f_container, .key = f->f_key};
}

static bool u128_eq(const struct m0_uint128 *a, const struct m0_uint128 *b)
{
	return a->u_hi == b->u_hi && a->u_lo == b->u_lo;
}

static bool str_ok(const char *s)
{
	return s != NULL && strlen(s) <= STR_MAX;
}

/* CLOCK_REALTIME deadline `ms` from now (h->cv uses the default clock). */
static struct timespec deadline_in(uint32_t ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += ms / 1000;
	dl.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	return dl;
}

static bool thread_known(const hax_glue *h)
{
	return pthread_equal(pthread_self(), h->init_tid) || tl_adopted != NULL || tl_in_cb > 0;
}

/* Locks h for an API call. Returns 0 with h->mu held, or an error without. */
static int enter(hax_glue *h, const char *fn)
{
	pthread_mutex_lock(&h->mu);
	if (!thread_known(h)) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR,
		     "%s: called from a thread unknown to the implementation (adopt it first)", fn);
		return HAX_E_THREAD;
	}
	if (h->state == S_INIT) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "%s: the interface is not started", fn);
		return HAX_E_STATE;
	}
	return 0;
}

/* --- messages ------------------------------------------------------------ */

static void msg_from_motr(const struct m0_ha_msg *m, uint64_t tag, struct hax_msg *o)
{
	const struct m0_ha_msg_data *d = &m->hm_data;
	memset(o, 0, offsetof(struct hax_msg, notes));
	o->fid = to_hax_fid(&m->hm_fid);
	o->source_process = to_hax_fid(&m->hm_source_process);
	o->source_service = to_hax_fid(&m->hm_source_service);
	o->time_ns = m->hm_time;
	o->epoch = m->hm_epoch;
	o->tag = tag;
	o->type = (uint32_t)d->hed_type;
	const struct m0_ha_note *notes = NULL;
	uint64_t nr = 0;
	switch (d->hed_type) {
	case M0_HA_MSG_STOB_IOQ: {
		const struct m0_stob_ioq_error *s = &d->u.hed_stob_ioq;
		o->u.stob_ioq.conf_sdev = to_hax_fid(&s->sie_conf_sdev);
		o->u.stob_ioq.stob_domain = to_hax_fid(&s->sie_stob_id.si_domain_fid);
		o->u.stob_ioq.stob_fid = to_hax_fid(&s->sie_stob_id.si_fid);
		o->u.stob_ioq.fd = s->sie_fd;
		o->u.stob_ioq.opcode = s->sie_opcode;
		o->u.stob_ioq.rc = s->sie_rc;
		o->u.stob_ioq.offset = s->sie_offset;
		o->u.stob_ioq.size = s->sie_size;
		o->u.stob_ioq.bshift = s->sie_bshift;
		break;
	}
	case M0_HA_MSG_NVEC:
		o->u.nvec.dir = d->u.hed_nvec.hmnv_type;
		o->u.nvec.id_of_get = d->u.hed_nvec.hmnv_id_of_get;
		o->u.nvec.ignore_same = d->u.hed_nvec.hmnv_ignore_same_state;
		notes = d->u.hed_nvec.hmnv_arr.hmna_arr;
		nr = d->u.hed_nvec.hmnv_nr;
		break;
	case M0_HA_MSG_FAILURE_VEC_REQ:
		o->u.fvec.pool = to_hax_fid(&d->u.hed_fvec_req.mfq_pool);
		o->u.fvec.cookie_addr = d->u.hed_fvec_req.mfq_cookie.co_addr;
		o->u.fvec.cookie_gen = d->u.hed_fvec_req.mfq_cookie.co_generation;
		break;
	case M0_HA_MSG_FAILURE_VEC_REP:
		o->u.fvec.pool = to_hax_fid(&d->u.hed_fvec_rep.mfp_pool);
		o->u.fvec.cookie_addr = d->u.hed_fvec_rep.mfp_cookie.co_addr;
		o->u.fvec.cookie_gen = d->u.hed_fvec_rep.mfp_cookie.co_generation;
		notes = d->u.hed_fvec_rep.mfp_vec.hmna_arr;
		nr = d->u.hed_fvec_rep.mfp_nr;
		break;
	case M0_HA_MSG_KEEPALIVE_REQ:
		o->u.keepalive.id.hi = d->u.hed_keepalive_req.kaq_id.u_hi;
		o->u.keepalive.id.lo = d->u.hed_keepalive_req.kaq_id.u_lo;
		break;
	case M0_HA_MSG_KEEPALIVE_REP:
		o->u.keepalive.id.hi = d->u.hed_keepalive_rep.kap_id.u_hi;
		o->u.keepalive.id.lo = d->u.hed_keepalive_rep.kap_id.u_lo;
		o->u.keepalive.counter = d->u.hed_keepalive_rep.kap_counter;
		break;
	case M0_HA_MSG_EVENT_PROCESS:
		o->u.event.event = d->u.hed_event_process.chp_event;
		o->u.event.type = d->u.hed_event_process.chp_type;
		o->u.event.pid = d->u.hed_event_process.chp_pid;
		break;
	case M0_HA_MSG_EVENT_SERVICE:
		o->u.event.event = d->u.hed_event_service.chs_event;
		o->u.event.type = d->u.hed_event_service.chs_type;
		o->u.event.pid = d->u.hed_event_service.chs_pid;
		break;
	case M0_HA_MSG_EVENT_RPC:
		o->u.rpc.attempts = d->u.hed_event_rpc.hmr_attempts;
		o->u.rpc.state = d->u.hed_event_rpc.hmr_state;
		break;
	case M0_HA_MSG_BE_IO_ERR:
		o->u.err.errcode = d->u.hed_be_io_err.ber_errcode;
		o->u.err.location = d->u.hed_be_io_err.ber_location;
		o->u.err.opcode = d->u.hed_be_io_err.ber_io_opcode;
		break;
	case M0_HA_MSG_SNS_ERR:
		o->u.err.errcode = d->u.hed_ha_sns_err.hse_errcode;
		o->u.err.opcode = d->u.hed_ha_sns_err.hse_opcode;
		break;
	default:
		break;
	}
	if (nr > HAX_NOTES_MAX)
		nr = HAX_NOTES_MAX;
	o->nr_notes = (uint32_t)nr;
	for (uint64_t i = 0; i < nr; i++) {
		o->notes[i].id = to_hax_fid(&notes[i].no_id);
		o->notes[i].state = notes[i].no_state;
		o->notes[i].pad_ = 0;
	}
}

/* msg has passed glue_check_msg(); m is zeroed by the caller. hm_tag stays 0. */
static void msg_to_motr(const struct hax_msg *msg, struct m0_ha_msg *m)
{
	struct m0_ha_msg_data *d = &m->hm_data;
	struct m0_ha_note *notes = NULL;
	m->hm_fid = to_m0_fid(&msg->fid);
	m->hm_source_process = to_m0_fid(&msg->source_process);
	m->hm_source_service = to_m0_fid(&msg->source_service);
	m->hm_time = msg->time_ns;
	m->hm_epoch = msg->epoch;
	d->hed_type = msg->type;
	switch (msg->type) {
	case HAX_MSG_STOB_IOQ: {
		struct m0_stob_ioq_error *s = &d->u.hed_stob_ioq;
		s->sie_conf_sdev = to_m0_fid(&msg->u.stob_ioq.conf_sdev);
		s->sie_stob_id.si_domain_fid = to_m0_fid(&msg->u.stob_ioq.stob_domain);
		s->sie_stob_id.si_fid = to_m0_fid(&msg->u.stob_ioq.stob_fid);
		s->sie_fd = msg->u.stob_ioq.fd;
		s->sie_opcode = msg->u.stob_ioq.opcode;
		s->sie_rc = msg->u.stob_ioq.rc;
		s->sie_offset = msg->u.stob_ioq.offset;
		s->sie_size = msg->u.stob_ioq.size;
		s->sie_bshift = msg->u.stob_ioq.bshift;
		break;
	}
	case HAX_MSG_NVEC:
		d->u.hed_nvec.hmnv_type = msg->u.nvec.dir;
		d->u.hed_nvec.hmnv_id_of_get = msg->u.nvec.id_of_get;
		d->u.hed_nvec.hmnv_ignore_same_state = msg->u.nvec.ignore_same;
		d->u.hed_nvec.hmnv_nr = msg->nr_notes;
		notes = d->u.hed_nvec.hmnv_arr.hmna_arr;
		break;
	case HAX_MSG_FVEC_REQ:
		d->u.hed_fvec_req.mfq_pool = to_m0_fid(&msg->u.fvec.pool);
		d->u.hed_fvec_req.mfq_cookie.co_addr = msg->u.fvec.cookie_addr;
		d->u.hed_fvec_req.mfq_cookie.co_generation = msg->u.fvec.cookie_gen;
		break;
	case HAX_MSG_FVEC_REP:
		d->u.hed_fvec_rep.mfp_pool = to_m0_fid(&msg->u.fvec.pool);
		d->u.hed_fvec_rep.mfp_cookie.co_addr = msg->u.fvec.cookie_addr;
		d->u.hed_fvec_rep.mfp_cookie.co_generation = msg->u.fvec.cookie_gen;
		d->u.hed_fvec_rep.mfp_nr = msg->nr_notes;
		notes = d->u.hed_fvec_rep.mfp_vec.hmna_arr;
		break;
	case HAX_MSG_KEEPALIVE_REQ:
		d->u.hed_keepalive_req.kaq_id.u_hi = msg->u.keepalive.id.hi;
		d->u.hed_keepalive_req.kaq_id.u_lo = msg->u.keepalive.id.lo;
		break;
	case HAX_MSG_KEEPALIVE_REP:
		d->u.hed_keepalive_rep.kap_id.u_hi = msg->u.keepalive.id.hi;
		d->u.hed_keepalive_rep.kap_id.u_lo = msg->u.keepalive.id.lo;
		d->u.hed_keepalive_rep.kap_counter = msg->u.keepalive.counter;
		break;
	case HAX_MSG_EVENT_PROCESS:
		d->u.hed_event_process.chp_event = msg->u.event.event;
		d->u.hed_event_process.chp_type = msg->u.event.type;
		d->u.hed_event_process.chp_pid = msg->u.event.pid;
		break;
	case HAX_MSG_EVENT_SERVICE:
		d->u.hed_event_service.chs_event = msg->u.event.event;
		d->u.hed_event_service.chs_type = msg->u.event.type;
		d->u.hed_event_service.chs_pid = msg->u.event.pid;
		break;
	case HAX_MSG_EVENT_RPC:
		d->u.hed_event_rpc.hmr_attempts = msg->u.rpc.attempts;
		d->u.hed_event_rpc.hmr_state = msg->u.rpc.state;
		break;
	case HAX_MSG_BE_IO_ERR:
		d->u.hed_be_io_err.ber_errcode = msg->u.err.errcode;
		d->u.hed_be_io_err.ber_location = msg->u.err.location;
		d->u.hed_be_io_err.ber_io_opcode = msg->u.err.opcode;
		break;
	case HAX_MSG_SNS_ERR:
		d->u.hed_ha_sns_err.hse_errcode = msg->u.err.errcode;
		d->u.hed_ha_sns_err.hse_opcode = msg->u.err.opcode;
		break;
	default:
		break;
	}
	if (notes != NULL) {
		for (uint32_t i = 0; i < msg->nr_notes; i++) {
			notes[i].no_id = to_m0_fid(&msg->notes[i].id);
			notes[i].no_state = msg->notes[i].state;
		}
	}
}

/* --- links --------------------------------------------------------------- */

static struct glink *link_by_id(const hax_glue *h, hax_link_id id)
{
	for (size_t i = 0; i < h->n_links; i++) {
		if (h->links[i]->id == id)
			return h->links[i];
	}
	return NULL;
}

static struct glink *link_by_hl(const hax_glue *h, const struct m0_ha_link *hl)
{
	for (size_t i = 0; i < h->n_links; i++) {
		if (h->links[i]->hl == hl)
			return h->links[i];
	}
	return NULL;
}

static bool link_was(const hax_glue *h, hax_link_id id)
{
	return id != 0 && id < h->next_link_id;
}

static void link_free(struct glink *l)
{
	for (struct get_rec *g = l->gets, *n; g != NULL; g = n) {
		n = g->next;
		free(g);
	}
	for (struct fvq_rec *f = l->fvqs, *n; f != NULL; f = n) {
		n = f->next;
		free(f);
	}
	free(l->rx);
	free(l);
}

static void link_remove(hax_glue *h, struct glink *l)
{
	for (size_t i = 0; i < h->n_links; i++) {
		if (h->links[i] == l) {
			memmove(&h->links[i], &h->links[i + 1],
				(h->n_links - i - 1) * sizeof(h->links[0]));
			h->n_links--;
			break;
		}
	}
	link_free(l);
}

static struct glink *link_add(hax_glue *h, struct m0_ha_link *hl, const struct greq *req)
{
	if (h->n_links == h->cap_links) {
		size_t cap = h->cap_links ? h->cap_links * 2 : 16;
		struct glink **nl = realloc(h->links, cap * sizeof(*nl));
		if (nl == NULL)
			return NULL;
		h->links = nl;
		h->cap_links = cap;
	}
	struct glink *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return NULL;
	l->id = h->next_link_id++;
	l->hl = hl;
	if (req != NULL) {
		l->process_fid = req->process_fid;
		snprintf(l->ep, sizeof(l->ep), "%s", req->ep);
		l->self = strcmp(req->ep, h->local_ep) == 0;
	} else {
		m0_ha_link_rpc_endpoint(hl, l->ep, sizeof(l->ep));
	}
	h->links[h->n_links++] = l;
	return l;
}

static int rx_push(struct glink *l, uint64_t tag, const struct m0_ha_msg *msg)
{
	if (l->n_rx == l->cap_rx) {
		size_t cap = l->cap_rx ? l->cap_rx * 2 : 16;
		struct rx *n = realloc(l->rx, cap * sizeof(*n));
		if (n == NULL)
			return -1;
		l->rx = n;
		l->cap_rx = cap;
	}
	l->rx[l->n_rx++] = (struct rx){tag, msg};
	return 0;
}

/* Removes tag from l's undelivered messages; NULL if it is not there. */
static const struct m0_ha_msg *rx_take(struct glink *l, uint64_t tag)
{
	for (size_t i = 0; i < l->n_rx; i++) {
		if (l->rx[i].tag == tag) {
			const struct m0_ha_msg *m = l->rx[i].msg;
			memmove(&l->rx[i], &l->rx[i + 1], (l->n_rx - i - 1) * sizeof(l->rx[0]));
			l->n_rx--;
			return m;
		}
	}
	return NULL;
}

/* Records a GET or FVEC_REQ passed up, so that its answer can be checked. */
static void record_request(struct glink *l, const struct m0_ha_msg *m)
{
	const struct m0_ha_msg_data *d = &m->hm_data;
	if (d->hed_type == M0_HA_MSG_NVEC && d->u.hed_nvec.hmnv_type == M0_HA_NVEC_GET) {
		uint64_t nr = d->u.hed_nvec.hmnv_nr;
		if (nr > HAX_NOTES_MAX)
			return;
		struct get_rec *g = malloc(sizeof(*g) + (size_t)nr * sizeof(g->fids[0]));
		if (g == NULL)
			return;
		g->id = d->u.hed_nvec.hmnv_id_of_get;
		g->nr = (uint32_t)nr;
		for (uint64_t i = 0; i < nr; i++)
			g->fids[i] = d->u.hed_nvec.hmnv_arr.hmna_arr[i].no_id;
		g->next = l->gets;
		l->gets = g;
	} else if (d->hed_type == M0_HA_MSG_FAILURE_VEC_REQ) {
		struct fvq_rec *f = malloc(sizeof(*f));
		if (f == NULL)
			return;
		f->cookie = d->u.hed_fvec_req.mfq_cookie;
		f->next = l->fvqs;
		l->fvqs = f;
	}
}

static struct get_rec **find_get(struct glink *l, const struct hax_msg *m)
{
	for (struct get_rec **pg = &l->gets; *pg != NULL; pg = &(*pg)->next) {
		struct get_rec *g = *pg;
		if (g->id != m->u.nvec.id_of_get || g->nr != m->nr_notes)
			continue;
		bool same = true;
		for (uint32_t i = 0; i < g->nr && same; i++) {
			struct m0_fid f = to_m0_fid(&m->notes[i].id);
			same = mfid_eq(&g->fids[i], &f);
		}
		if (same)
			return pg;
	}
	return NULL;
}

static struct fvq_rec **find_fvq(struct glink *l, const struct hax_msg *m)
{
	for (struct fvq_rec **pf = &l->fvqs; *pf != NULL; pf = &(*pf)->next) {
		if ((*pf)->cookie.co_addr == m->u.fvec.cookie_addr &&
		    (*pf)->cookie.co_generation == m->u.fvec.cookie_gen)
			return pf;
	}
	return NULL;
}

/* Process fids of a self-link NVEC SET that Motr's table does not hold yet. */
static size_t fid_new_count(const hax_glue *h, const struct hax_msg *m)
{
	size_t n = 0;
	for (uint32_t i = 0; i < m->nr_notes; i++) {
		const struct hax_fid *f = &m->notes[i].id;
		if (fid_type(f) != 'r')
			continue;
		struct m0_fid mf = to_m0_fid(f);
		bool known = false;
		for (size_t j = 0; j < h->fid_n && !known; j++)
			known = mfid_eq(&h->fidtab[j], &mf);
		for (uint32_t j = 0; j < i && !known; j++)
			known = fid_eq(&m->notes[j].id, f);
		n += !known;
	}
	return n;
}

static void fid_note(hax_glue *h, const struct hax_msg *m)
{
	for (uint32_t i = 0; i < m->nr_notes; i++) {
		if (fid_type(&m->notes[i].id) != 'r')
			continue;
		struct m0_fid mf = to_m0_fid(&m->notes[i].id);
		bool known = false;
		for (size_t j = 0; j < h->fid_n && !known; j++)
			known = mfid_eq(&h->fidtab[j], &mf);
		if (!known && h->fid_n < FIDTAB_MAX)
			h->fidtab[h->fid_n++] = mf;
	}
}

/*
 * Ends a glue call that used l->hl (busy was taken under h->mu). Called with
 * h->mu held; returns with it released. The last call out hands a link that
 * was disconnected meanwhile to Motr.
 */
static void link_release(hax_glue *h, struct glink *l)
{
	struct m0_ha_link *disc = NULL;
	if (--l->busy == 0 && l->disconnected && !l->motr_disc) {
		l->motr_disc = true;
		disc = l->hl;
	}
	struct m0_halon_interface *hi = h->hi;
	pthread_mutex_unlock(&h->mu);
	if (disc != NULL)
		m0_halon_interface_disconnect(hi, disc);
}

/* --- requests ------------------------------------------------------------ */

static struct greq *req_find(const hax_glue *h, const struct m0_uint128 *id)
{
	for (struct greq *r = h->reqs; r != NULL; r = r->next) {
		if (u128_eq(&r->id, id))
			return r;
	}
	return NULL;
}

static void req_remove(hax_glue *h, struct greq *req)
{
	for (struct greq **pr = &h->reqs; *pr != NULL; pr = &(*pr)->next) {
		if (*pr == req) {
			*pr = req->next;
			break;
		}
	}
	free(req);
}

/*
 * While stop() runs, a later (not first) request from a process none of
 * whose links is live is withheld (see hax_glue.h): Motr's stop() disconnects
 * every incoming link (ha/ha.c, M0_HA_LEVEL_INCOMING_LINKS) before it stops
 * the entrypoint service (M0_HA_LEVEL_ENTRYPOINT_SERVER_START); a peer whose
 * link fop got -ENOLINK asks again, and ha_link_handle() marks any answer to
 * it, whatever the rc, disconnected_previously (the link is no longer in
 * h_links_incoming, the cookie is ours), on which ha_entrypoint_state_cb()
 * asserts before it looks at hae_control. h->mu held.
 */
static bool stop_withholds(const hax_glue *h, const struct hax_fid *fid, bool first)
{
	if (h->state != S_STOPPING || first || fid_eq(fid, &h->own_fid))
		return false;
	for (size_t i = 0; i < h->n_links; i++) {
		const struct glink *l = h->links[i];
		if (!l->self && !l->disconnected && fid_eq(&l->process_fid, fid))
			return false;
	}
	return true;
}

/* --- callbacks from Motr ------------------------------------------------- */

static hax_glue *cb_handle(void)
{
	return __atomic_load_n(&g_h, __ATOMIC_ACQUIRE);
}

static void on_entrypoint_request(struct m0_halon_interface *hi, const struct m0_uint128 *req_id,
				  const char *remote_ep, const struct m0_fid *process_fid,
				  const char *git_rev_id, uint64_t pid, bool first_request)
{
	(void)hi;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return; /* after a cut-short stop: left unanswered, as withheld */
	struct hax_fid fid = to_hax_fid(process_fid);
	struct hax_u128 id = {req_id->u_hi, req_id->u_lo};
	struct greq *r = calloc(1, sizeof(*r));
	if (r != NULL) {
		r->id = *req_id;
		r->state = R_PENDING;
		r->up = true;
		r->process_fid = fid;
		snprintf(r->ep, sizeof(r->ep), "%s", remote_ep != NULL ? remote_ep : "");
	}
	/* Decided and recorded under one lock hold: stop() cuts short only
	 * with no request pending, and none is passed up after it has. */
	pthread_mutex_lock(&h->mu);
	bool withhold = h->cut_short || stop_withholds(h, &fid, first_request);
	if (withhold)
		h->n_withheld++;
	else if (r != NULL) {
		r->next = h->reqs;
		h->reqs = r;
	}
	pthread_mutex_unlock(&h->mu);
	if (withhold) {
		free(r);
		glog(h, HAX_LOG_INFO, "entrypoint request {%llu,%llu} from %s (process " FIDF ") "
		     "withheld: hax is stopping and the process has no live link; any answer "
		     "would carry disconnected_previously and fence it",
		     (unsigned long long)id.hi, (unsigned long long)id.lo,
		     remote_ep != NULL ? remote_ep : "", FIDP(&fid));
		return;
	}
	if (r == NULL) {
		glog(h, HAX_LOG_ERROR, "out of memory: entrypoint request {%llu,%llu} answered "
		     "with EAGAIN", (unsigned long long)id.hi, (unsigned long long)id.lo);
		m0_halon_interface_entrypoint_reply(h->hi, req_id, -EAGAIN, 0, NULL, NULL, 0, NULL,
						    NULL);
		return;
	}
	tl_in_cb++;
	h->cbs.entrypoint_request(h->cbs.user, &id, remote_ep != NULL ? remote_ep : "", &fid,
				  git_rev_id != NULL ? git_rev_id : "", pid, first_request);
	tl_in_cb--;
}

/*
 * A receive buffer that completes while `receive_buffers` are posted goes
 * back to the pool (receive_pool_shrink), holding the pages its message
 * touched; the pool hands its free buffers out in turn, so over time every
 * one of Motr's 100 would be touched. Past the pool's threshold, free
 * buffers are freed (m0_net_buffer_pool_prune: deregistered, freed; a free
 * buffer is posted nowhere). At most once a second, on a Motr thread: the
 * one that brings a message.
 */
static void receive_pool_trim(hax_glue *h)
{
	if (__atomic_load_n(&h->receive_buffers, __ATOMIC_RELAXED) == 0)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
	uint64_t last = __atomic_load_n(&h->pool_trimmed_ms, __ATOMIC_RELAXED);
	if (now - last < 1000 ||
	    !__atomic_compare_exchange_n(&h->pool_trimmed_ms, &last, now, false,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		return;
	/* Only while working: Motr's stop finalises the pool, and stop() cannot
	 * get past the state change while this holds h->mu. Nothing takes
	 * h->mu under the pool's lock. */
	pthread_mutex_lock(&h->mu);
	if (h->state == S_WORKING) {
		struct m0_rpc_machine *rm = m0_halon_interface_rpc_machine(h->hi);
		struct m0_net_buffer_pool *pool = rm != NULL ? rm->rm_tm.ntm_recv_pool : NULL;
		if (pool != NULL) {
			m0_net_buffer_pool_lock(pool);
			while (m0_net_buffer_pool_prune(pool))
				;
			m0_net_buffer_pool_unlock(pool);
		}
	}
	pthread_mutex_unlock(&h->mu);
}

static void on_msg_received(struct m0_halon_interface *hi, struct m0_ha_link *hl,
			    const struct m0_ha_msg *msg, uint64_t tag)
{
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	receive_pool_trim(h);
	pthread_mutex_lock(&h->mu);
	struct glink *l = link_by_hl(h, hl);
	if (l == NULL || rx_push(l, tag, msg) != 0) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR, "message tag %llu on %s link: delivered unseen",
		     (unsigned long long)tag, l == NULL ? "an unknown" : "a full");
		m0_halon_interface_delivered(hi, hl, msg);
		return;
	}
	record_request(l, msg);
	hax_link_id id = l->id;
	pthread_mutex_unlock(&h->mu);
	struct hax_msg *m = malloc(sizeof(*m));
	if (m == NULL) {
		pthread_mutex_lock(&h->mu);
		l = link_by_id(h, id);
		const struct m0_ha_msg *mm = l != NULL ? rx_take(l, tag) : NULL;
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR, "out of memory: message tag %llu on link %llu delivered "
		     "unseen", (unsigned long long)tag, (unsigned long long)id);
		if (mm != NULL)
			m0_halon_interface_delivered(hi, hl, mm);
		return;
	}
	msg_from_motr(msg, tag, m);
	tl_in_cb++;
	h->cbs.msg_received(h->cbs.user, id, m);
	tl_in_cb--;
	free(m);
}

static void on_delivery(struct m0_ha_link *hl, uint64_t tag, bool delivered)
{
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	struct glink *l = link_by_hl(h, hl);
	hax_link_id id = l != NULL ? l->id : 0;
	pthread_mutex_unlock(&h->mu);
	if (id == 0)
		return;
	tl_in_cb++;
	if (delivered)
		h->cbs.msg_delivered(h->cbs.user, id, tag);
	else
		h->cbs.msg_not_delivered(h->cbs.user, id, tag);
	tl_in_cb--;
}

static void on_msg_is_delivered(struct m0_halon_interface *hi, struct m0_ha_link *hl, uint64_t tag)
{
	(void)hi;
	on_delivery(hl, tag, true);
}

static void on_msg_is_not_delivered(struct m0_halon_interface *hi, struct m0_ha_link *hl,
				    uint64_t tag)
{
	(void)hi;
	on_delivery(hl, tag, false);
}

/* link_connected, link_reused and link_absent run inside
 * m0_halon_interface_entrypoint_reply(), on the replying thread. */
static void on_link_connected(struct m0_halon_interface *hi, const struct m0_uint128 *req_id,
			      struct m0_ha_link *hl)
{
	(void)hi;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	struct greq *r = req_find(h, req_id);
	struct glink *l = link_by_hl(h, hl);
	if (l == NULL)
		l = link_add(h, hl, r);
	if (l == NULL) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR, "out of memory: a connected link is not tracked");
		return;
	}
	hax_link_id id = l->id;
	struct hax_fid fid = l->process_fid;
	char ep[HAX_EP_MAX];
	memcpy(ep, l->ep, sizeof(ep));
	bool self = l->self;
	pthread_mutex_unlock(&h->mu);
	glog(h, HAX_LOG_INFO, "link %llu connected: %s, process " FIDF "%s",
	     (unsigned long long)id, ep, FIDP(&fid), self ? " (self)" : "");
	struct hax_u128 rid = {req_id->u_hi, req_id->u_lo};
	tl_in_cb++;
	h->cbs.link_connected(h->cbs.user, &rid, id, ep, &fid);
	tl_in_cb--;
}

static void on_link_reused(struct m0_halon_interface *hi, const struct m0_uint128 *req_id,
			   struct m0_ha_link *hl)
{
	(void)hi;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	struct glink *l = link_by_hl(h, hl);
	hax_link_id id = l != NULL ? l->id : 0;
	pthread_mutex_unlock(&h->mu);
	if (id == 0) {
		glog(h, HAX_LOG_ERROR, "link_reused for a link the glue does not know");
		return;
	}
	struct hax_u128 rid = {req_id->u_hi, req_id->u_lo};
	tl_in_cb++;
	h->cbs.link_reused(h->cbs.user, &rid, id);
	tl_in_cb--;
}

static void on_link_absent(struct m0_halon_interface *hi, const struct m0_uint128 *req_id)
{
	(void)hi;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	struct hax_u128 rid = {req_id->u_hi, req_id->u_lo};
	tl_in_cb++;
	h->cbs.link_absent(h->cbs.user, &rid);
	tl_in_cb--;
}

static void on_link_is_disconnecting(struct m0_halon_interface *hi, struct m0_ha_link *hl)
{
	(void)hi;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	struct glink *l = link_by_hl(h, hl);
	if (l == NULL) {
		/* Not known (out of memory at connect): Motr waits for disconnect. */
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR, "link_is_disconnecting for an unknown link: disconnected");
		m0_halon_interface_disconnect(h->hi, hl);
		return;
	}
	l->disc_cb = true;
	hax_link_id id = l->id;
	pthread_mutex_unlock(&h->mu);
	tl_in_cb++;
	h->cbs.link_is_disconnecting(h->cbs.user, id);
	tl_in_cb--;
}

static void on_link_disconnected(struct m0_halon_interface *hi, struct m0_ha_link *hl)
{
	(void)hi;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	struct glink *l = link_by_hl(h, hl);
	hax_link_id id = l != NULL ? l->id : 0;
	pthread_mutex_unlock(&h->mu);
	if (id == 0)
		return;
	tl_in_cb++;
	h->cbs.link_disconnected(h->cbs.user, id);
	tl_in_cb--;
	pthread_mutex_lock(&h->mu);
	l = link_by_id(h, id);
	if (l != NULL)
		link_remove(h, l);
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	glog(h, HAX_LOG_INFO, "link %llu disconnected", (unsigned long long)id);
}

/* --- API: version and lifecycle ------------------------------------------ */

uint32_t hax_glue_abi_version(void)
{
	return HAX_GLUE_ABI_VERSION;
}

const char *hax_glue_backend(void)
{
	return "motr";
}

uint64_t hax_glue_violations(hax_glue *h)
{
	(void)h;
	return 0; /* refused calls never reach Motr, which would assert */
}

static uint32_t opt_ms(const char *opts, const char *name, uint32_t dflt)
{
	const char *t = strstr(opts, name);
	if (t == NULL)
		return dflt;
	t += strlen(name);
	char *end;
	unsigned long v = strtoul(t, &end, 10);
	return end != t && v <= 3600000ul ? (uint32_t)v : dflt;
}

int hax_glue_init(hax_glue **out, const char *debug_options, const char *node_uuid)
{
	if (out == NULL)
		return HAX_E_INVAL;
	*out = NULL;
	pthread_mutex_lock(&g_mu);
	if (g_h != NULL) {
		pthread_mutex_unlock(&g_mu);
		return HAX_E_STATE; /* one interface per process */
	}
	hax_glue *h = calloc(1, sizeof(*h));
	if (h == NULL) {
		pthread_mutex_unlock(&g_mu);
		return -ENOMEM;
	}
	h->stop_timeout_ms = DEFAULT_STOP_TIMEOUT_MS;
	h->rconfc_timeout_ms = DEFAULT_RCONFC_TIMEOUT_MS;
	if (debug_options != NULL) {
		h->stop_timeout_ms = opt_ms(debug_options, "stop-timeout-ms=", h->stop_timeout_ms);
		h->rconfc_timeout_ms =
			opt_ms(debug_options, "rconfc-timeout-ms=", h->rconfc_timeout_ms);
	}
	/* The linked library's own build id: the compatibility check compares
	 * hax's build with the libmotr it runs with, which is this one. */
	const struct m0_build_info *bi = m0_build_info_get();
	int rc = m0_halon_interface_init(&h->hi, bi->bi_git_rev_id, bi->bi_configure_opts,
					 debug_options != NULL ? debug_options : "", node_uuid);
	if (rc != 0) {
		free(h);
		pthread_mutex_unlock(&g_mu);
		return rc;
	}
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	h->init_tid = pthread_self();
	h->state = S_INIT;
	h->next_link_id = 1;
	__atomic_store_n(&g_h, h, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&g_mu);
	*out = h;
	return 0;
}

int hax_glue_fini(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid)) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_THREAD;
	}
	if (h->state != S_INIT) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_STATE;
	}
	pthread_mutex_unlock(&h->mu);
	pthread_mutex_lock(&g_mu);
	__atomic_store_n(&g_h, NULL, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&g_mu);
	m0_addb2_global_thread_leave();
	m0_halon_interface_fini(h->hi);
	pthread_cond_destroy(&h->cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
	return 0;
}

int hax_glue_thread_adopt(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	if (tl_adopted != NULL || pthread_equal(pthread_self(), h->init_tid))
		return 0;
	struct m0_thread *t = calloc(1, sizeof(*t)); /* Motr wants it zeroed */
	if (t == NULL)
		return -ENOMEM;
	int rc = m0_halon_interface_thread_adopt(h->hi, t);
	if (rc != 0) {
		free(t);
		return rc;
	}
	tl_adopted = t;
	return 0;
}

int hax_glue_thread_shun(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	if (tl_adopted == NULL)
		return thread_known(h) ? 0 : HAX_E_THREAD;
	m0_halon_interface_thread_shun();
	free(tl_adopted);
	tl_adopted = NULL;
	return 0;
}

int hax_glue_set_receive_buffers(hax_glue *h, uint32_t n)
{
	if (h == NULL || n > HAX_RECEIVE_BUFFERS_MAX)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	int rc = 0;
	if (!pthread_equal(pthread_self(), h->init_tid))
		rc = HAX_E_THREAD;
	else if (h->state != S_INIT)
		rc = HAX_E_STATE;
	else
		h->receive_buffers = n;
	pthread_mutex_unlock(&h->mu);
	return rc;
}

/*
 * The halon interface posts all of its 100 receive buffers (ha/halon/
 * interface.c, hic_bufs_nr and hic_queue_len), each of the transport's RPC
 * segment size (1 MiB on libfabric), zeroed when allocated, so about 100 MiB
 * resident from the start. They cannot be taken back: libfabric holds a
 * posted buffer in its shared receive context until a message fills it, and
 * Motr's libfab cancels a receive buffer without withdrawing it from there
 * (net/libfab/libfab.c, libfab_buf_del), so a cancelled buffer, once freed,
 * would still be written. Instead:
 * - the queue's minimum is lowered to `keep`, so a buffer that completes is
 *   reposted only while fewer than `keep` are posted; the others go back to
 *   the pool, which frees them (receive_pool_trim);
 * - the pages of every posted buffer past the first `keep` are given back
 *   (MADV_DONTNEED): the memory stays allocated and reads as zeroes, as
 *   Motr left it, and a page comes back when a message is written to it.
 *   Receives consume posted buffers in the order they were posted, so the
 *   buffers past `keep` are not written unless that many messages arrive
 *   at once; this runs at start, before any peer has a link.
 */
static void receive_pool_shrink(hax_glue *h, uint32_t keep)
{
	struct m0_rpc_machine *rm = m0_halon_interface_rpc_machine(h->hi);
	struct m0_net_transfer_mc *tm = &rm->rm_tm;
	if (tm->ntm_recv_pool == NULL)
		return;
	m0_net_tm_pool_length_set(tm, keep);
	long page = sysconf(_SC_PAGESIZE);
	uintptr_t mask = (uintptr_t)(page > 0 ? page : 4096) - 1;
	uint32_t posted = 0, released = 0;
	size_t bytes = 0;
	m0_mutex_lock(&tm->ntm_mutex);
	struct m0_net_buffer *nb;
	m0_tl_for(m0_net_tm, &tm->ntm_q[M0_NET_QT_MSG_RECV], nb) {
		if (++posted <= keep)
			continue;
		for (uint32_t i = 0; i < nb->nb_buffer.ov_vec.v_nr; i++) {
			uintptr_t from = ((uintptr_t)nb->nb_buffer.ov_buf[i] + mask) & ~mask;
			uintptr_t to = ((uintptr_t)nb->nb_buffer.ov_buf[i] +
					nb->nb_buffer.ov_vec.v_count[i]) & ~mask;
			if (to > from && madvise((void *)from, to - from, MADV_DONTNEED) == 0)
				bytes += to - from;
		}
		released++;
	} m0_tl_endfor;
	m0_mutex_unlock(&tm->ntm_mutex);
	glog(h, HAX_LOG_INFO,
	     "receive buffers: %u posted, %u kept in use, %zu KiB given back from the other %u",
	     posted, keep, bytes / 1024, released);
}

int hax_glue_start(hax_glue *h, const char *local_ep, const struct hax_fid *process_fid,
		   const struct hax_fid *ha_service_fid, const struct hax_fid *rm_service_fid,
		   const struct hax_callbacks *cbs)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid)) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_THREAD;
	}
	if (h->state != S_INIT) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_STATE;
	}
	if (local_ep == NULL || process_fid == NULL || ha_service_fid == NULL ||
	    rm_service_fid == NULL || cbs == NULL || cbs->entrypoint_request == NULL ||
	    cbs->msg_received == NULL || cbs->msg_delivered == NULL ||
	    cbs->msg_not_delivered == NULL || cbs->link_connected == NULL ||
	    cbs->link_reused == NULL || cbs->link_absent == NULL ||
	    cbs->link_is_disconnecting == NULL || cbs->link_disconnected == NULL ||
	    strlen(local_ep) >= HAX_EP_MAX) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_INVAL;
	}
	h->cbs = *cbs;
	h->own_fid = *process_fid;
	h->n_withheld = 0;
	snprintf(h->local_ep, sizeof(h->local_ep), "%s", local_ep);
	h->fid_n = 0;
	h->forced = false;
	h->stop_done = false;
	h->state = S_STARTING;
	pthread_mutex_unlock(&h->mu);

	struct m0_fid pf = to_m0_fid(process_fid);
	struct m0_fid hf = to_m0_fid(ha_service_fid);
	struct m0_fid rf = to_m0_fid(rm_service_fid);
	int rc = m0_halon_interface_start(h->hi, local_ep, &pf, &hf, &rf, on_entrypoint_request,
					  on_msg_received, on_msg_is_delivered,
					  on_msg_is_not_delivered, on_link_connected,
					  on_link_reused, on_link_absent,
					  on_link_is_disconnecting, on_link_disconnected);
	pthread_mutex_lock(&h->mu);
	if (rc != 0) {
		while (h->n_links > 0)
			link_remove(h, h->links[h->n_links - 1]);
		while (h->reqs != NULL)
			req_remove(h, h->reqs);
		h->state = S_INIT;
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR, "m0_halon_interface_start(%s) failed: %d", local_ep, rc);
		return rc;
	}
	h->state = S_WORKING;
	h->rconfc = RC_OFF;
	h->run++;
	uint32_t keep = h->receive_buffers;
	pthread_mutex_unlock(&h->mu);
	if (keep > 0)
		receive_pool_shrink(h, keep);
	struct m0_spiel *spiel = m0_halon_interface_spiel(h->hi);
	pthread_mutex_lock(&h->mu);
	h->spiel = spiel;
	pthread_mutex_unlock(&h->mu);
	glog(h, HAX_LOG_INFO, "halon interface started on %s, process " FIDF "%s", local_ep,
	     FIDP(process_fid), spiel == NULL ? " (no spiel: client operations unavailable)" : "");
	return 0;
}

/* --- client operations: shutdown ----------------------------------------- */

/*
 * m0_spiel_rconfc_stop(), with a repair between its two steps. rconfc adds
 * the active RM's fid to its phony cache each time it consumes an entrypoint
 * reply, and removes it only with the RM creditor; when the confds cannot be
 * reached (rconfc_start_internal() fails with -EAGAIN and tries again), the
 * fid stays, and m0_rconfc_fini() then asserts that the root alone is left
 * (conf/rconfc.c, _confc_phony_fini()): a stop or a new start after such a
 * failure panicked. Once rconfc is stopped nothing refers to those objects;
 * they go the way rconfc removes its own (_confc_phony_cache_remove()).
 */
static void spiel_rconfc_stop(struct m0_spiel *spiel)
{
	struct m0_rconfc *rconfc = &spiel->spl_rconfc;
	m0_rconfc_stop_sync(rconfc);
	struct m0_confc *phony = &rconfc->rc_phony;
	struct m0_conf_cache *cache = &phony->cc_cache;
	m0_conf_cache_lock(cache);
	struct m0_conf_obj *next;
	for (struct m0_conf_obj *obj = m0_conf_cache_tlist_head(&cache->ca_registry); obj != NULL;
	     obj = next) {
		next = m0_conf_cache_tlist_next(&cache->ca_registry, obj);
		if (obj == phony->cc_root || m0_conf_obj_is_stub(obj))
			continue;
		obj->co_status = M0_CS_MISSING;
		obj->co_nrefs = 0;
		m0_conf_cache_del(cache, obj);
	}
	m0_conf_cache_unlock(cache);
	m0_rconfc_fini(rconfc);
}

/*
 * Waits for the client calls in progress (they end when their RPCs do; each
 * then returns -ESHUTDOWN) and stops rconfc. Runs on the init thread, from
 * stop(), with the state already S_STOPPING, so that no new call begins.
 */
static void client_shutdown(hax_glue *h)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pthread_mutex_lock(&h->mu);
	while (h->client_calls > 0)
		pthread_cond_wait(&h->cv, &h->mu);
	/* A start still going on: rconfc can be stopped only once it has
	 * settled (ready or failed); give it the stop deadline. */
	if (h->rconfc == RC_STARTING) {
		struct timespec dl = deadline_in(h->stop_timeout_ms);
		while (h->rconfc == RC_STARTING &&
		       pthread_cond_timedwait(&h->cv, &h->mu, &dl) != ETIMEDOUT)
			;
	}
	enum rconfc_state st = h->rconfc;
	if (st == RC_ON || st == RC_FAILED)
		h->rconfc = RC_STOPPING;
	struct m0_spiel *spiel = h->spiel;
	pthread_mutex_unlock(&h->mu);
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long waited = (long)(t1.tv_sec - t0.tv_sec) * 1000L + (t1.tv_nsec - t0.tv_nsec) / 1000000L;
	if (waited > (long)h->stop_timeout_ms)
		glog(h, HAX_LOG_WARN, "stop: client calls in progress took %ld ms to end", waited);
	if ((st == RC_ON || st == RC_FAILED) && spiel != NULL) {
		spiel_rconfc_stop(spiel);
		glog(h, HAX_LOG_INFO, "stop: rconfc stopped");
	} else if (st == RC_STARTING) {
		glog(h, HAX_LOG_ERROR, "stop: rconfc is still starting after %u ms (no confd "
		     "quorum or read lock): left as it is, Motr cannot stop it before it "
		     "settles", h->stop_timeout_ms);
	}
	pthread_mutex_lock(&h->mu);
	if (h->rconfc != RC_STARTING)
		h->rconfc = RC_OFF;
	h->spiel = NULL;
	pthread_mutex_unlock(&h->mu);
}

/* --- stop and its deadline ----------------------------------------------- */

/*
 * Answers what the user left unanswered once the deadline has passed:
 * undelivered messages, entrypoint requests, links announced disconnecting.
 * Runs on the watchdog thread (adopted). Returns true if it did anything.
 */
static bool force_once(hax_glue *h)
{
	bool did = false;
	pthread_mutex_lock(&h->mu);
	for (;;) {
		struct greq *r = h->reqs;
		while (r != NULL && r->state != R_PENDING)
			r = r->next;
		if (r == NULL)
			break;
		struct m0_uint128 id = r->id;
		char ep[HAX_EP_MAX];
		memcpy(ep, r->ep, sizeof(ep));
		r->state = R_REPLYING;
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_ERROR, "stop: entrypoint request {%llu,%llu} from %s was not "
		     "answered within %u ms: answered with EAGAIN",
		     (unsigned long long)id.u_hi, (unsigned long long)id.u_lo, ep,
		     h->stop_timeout_ms);
		m0_halon_interface_entrypoint_reply(h->hi, &id, -EAGAIN, 0, NULL, NULL, 0, NULL,
						    NULL);
		pthread_mutex_lock(&h->mu);
		r = req_find(h, &id);
		if (r != NULL)
			req_remove(h, r);
		did = true;
	}
	for (size_t i = 0; i < h->n_links; i++) {
		struct glink *l = h->links[i];
		if (l->n_rx > 0 && !l->motr_disc) {
			hax_link_id id = l->id;
			struct rx x = l->rx[0];
			rx_take(l, x.tag);
			l->busy++;
			struct m0_ha_link *hl = l->hl;
			pthread_mutex_unlock(&h->mu);
			glog(h, HAX_LOG_ERROR, "stop: message tag %llu on link %llu was not "
			     "delivered within %u ms: delivered", (unsigned long long)x.tag,
			     (unsigned long long)id, h->stop_timeout_ms);
			m0_halon_interface_delivered(h->hi, hl, x.msg);
			pthread_mutex_lock(&h->mu);
			link_release(h, l);
			pthread_mutex_lock(&h->mu);
			did = true;
			i = (size_t)-1; /* the table may have changed */
			continue;
		}
		if (l->disc_cb && !l->disconnected) {
			hax_link_id id = l->id;
			l->disconnected = true;
			l->busy++;
			pthread_mutex_unlock(&h->mu);
			glog(h, HAX_LOG_ERROR, "stop: link %llu was not disconnected within %u ms "
			     "after link_is_disconnecting: disconnected", (unsigned long long)id,
			     h->stop_timeout_ms);
			pthread_mutex_lock(&h->mu);
			link_release(h, l);
			pthread_mutex_lock(&h->mu);
			did = true;
			i = (size_t)-1;
		}
	}
	if (did)
		h->forced = true;
	pthread_mutex_unlock(&h->mu);
	return did;
}

static void *watchdog_main(void *arg)
{
	hax_glue *h = arg;
	struct m0_thread *t = calloc(1, sizeof(*t));
	if (t == NULL || m0_halon_interface_thread_adopt(h->hi, t) != 0) {
		free(t);
		return NULL;
	}
	tl_adopted = t;
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += h->stop_timeout_ms / 1000;
	dl.tv_nsec += (long)(h->stop_timeout_ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&h->mu);
	while (!h->stop_done && !h->cut_short &&
	       pthread_cond_timedwait(&h->cv, &h->mu, &dl) != ETIMEDOUT)
		;
	while (!h->stop_done && !h->cut_short) {
		pthread_mutex_unlock(&h->mu);
		force_once(h);
		pthread_mutex_lock(&h->mu);
		if (h->stop_done || h->cut_short)
			break;
		struct timespec next;
		clock_gettime(CLOCK_REALTIME, &next);
		next.tv_nsec += 100 * 1000000L;
		if (next.tv_nsec >= 1000000000L) {
			next.tv_sec++;
			next.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&h->cv, &h->mu, &next);
	}
	pthread_mutex_unlock(&h->mu);
	m0_halon_interface_thread_shun();
	tl_adopted = NULL;
	free(t);
	return NULL;
}

/* Runs m0_halon_interface_stop() on a thread of its own (adopted, as Hare
 * stops from a consumer thread), so that stop() can return when only
 * withheld requests hold it. */
static void *stopper_main(void *arg)
{
	hax_glue *h = arg;
	struct m0_thread *t = calloc(1, sizeof(*t));
	bool adopted = t != NULL && m0_halon_interface_thread_adopt(h->hi, t) == 0;
	if (adopted) {
		tl_adopted = t;
		m0_halon_interface_stop(h->hi);
		m0_halon_interface_thread_shun();
		tl_adopted = NULL;
	}
	free(t);
	pthread_mutex_lock(&h->mu);
	if (adopted)
		h->stop_done = true;
	else
		h->stopper_failed = true;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

/* True when Motr's stop can only be waiting for withheld requests: every
 * link is gone and every request passed up has been answered. h->mu held. */
static bool only_withheld_left(const hax_glue *h)
{
	if (h->n_withheld == 0 || h->n_links > 0)
		return false;
	for (const struct greq *r = h->reqs; r != NULL; r = r->next) {
		if (r->state == R_PENDING || r->state == R_REPLYING)
			return false;
	}
	return true;
}

int hax_glue_stop(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid)) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_THREAD;
	}
	if (h->state != S_WORKING) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_STATE;
	}
	h->state = S_STOPPING;
	h->stop_done = false;
	h->forced = false;
	size_t n = h->n_links;
	unsigned calls = h->client_calls;
	pthread_cond_broadcast(&h->cv); /* a waiting rconfc start returns */
	pthread_mutex_unlock(&h->mu);
	glog(h, HAX_LOG_INFO, "stopping: %zu links, %u client calls in progress", n, calls);
	client_shutdown(h);
	bool dog = pthread_create(&h->watchdog, NULL, watchdog_main, h) == 0;
	if (!dog)
		glog(h, HAX_LOG_WARN, "stop: no watchdog thread: stop() has no deadline");
	h->stopper_failed = false;
	bool own = pthread_create(&h->stopper, NULL, stopper_main, h) == 0;
	bool cut = false;
	pthread_mutex_lock(&h->mu);
	while (own && !h->stop_done && !h->stopper_failed) {
		if (only_withheld_left(h)) {
			cut = true;
			h->cut_short = true;
			pthread_cond_broadcast(&h->cv);
			break;
		}
		struct timespec next;
		clock_gettime(CLOCK_REALTIME, &next);
		next.tv_nsec += 50 * 1000000L;
		if (next.tv_nsec >= 1000000000L) {
			next.tv_sec++;
			next.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&h->cv, &h->mu, &next);
	}
	bool inline_stop = !own || h->stopper_failed;
	size_t withheld = h->n_withheld;
	pthread_mutex_unlock(&h->mu);
	if (own && !cut)
		pthread_join(h->stopper, NULL);
	if (inline_stop) {
		/* No stopper thread: stop here; withheld requests then hang it. */
		m0_halon_interface_stop(h->hi);
		pthread_mutex_lock(&h->mu);
		h->stop_done = true;
		pthread_cond_broadcast(&h->cv);
		pthread_mutex_unlock(&h->mu);
	}
	if (dog)
		pthread_join(h->watchdog, NULL);
	if (cut) {
		/* Motr's stop waits for the withheld requests for ever: no
		 * callback reaches the user any more, the handle stays stopping,
		 * and the process is to exit. */
		pthread_detach(h->stopper);
		pthread_mutex_lock(&g_mu);
		__atomic_store_n(&g_h, NULL, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&g_mu);
		glog(h, HAX_LOG_WARN, "stop cut short: %zu entrypoint requests withheld; Motr's "
		     "stop() waits for them and cannot finish: the process is to exit", withheld);
		return HAX_E_WITHHELD;
	}
	pthread_mutex_lock(&h->mu);
	bool forced = h->forced;
	size_t left = h->n_links;
	while (h->n_links > 0)
		link_remove(h, h->links[h->n_links - 1]);
	while (h->reqs != NULL)
		req_remove(h, h->reqs);
	h->state = S_INIT;
	pthread_mutex_unlock(&h->mu);
	if (left > 0)
		glog(h, HAX_LOG_WARN, "stop: %zu links were left in the table", left);
	glog(h, HAX_LOG_INFO, "halon interface stopped%s", forced ? " after forcing a hang" : "");
	return forced ? HAX_E_HANG : 0;
}

/* --- API: entrypoint ----------------------------------------------------- */

int hax_glue_entrypoint_reply(hax_glue *h, const struct hax_u128 *req_id, int32_t rc,
			      uint32_t confd_nr, const struct hax_fid *confd_fids,
			      const char *const *confd_eps, uint32_t quorum,
			      const struct hax_fid *rm_fid, const char *rm_ep)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "entrypoint_reply");
	if (e != 0)
		return e;
	pthread_mutex_unlock(&h->mu);
	if (req_id == NULL || (confd_nr > 0 && (confd_fids == NULL || confd_eps == NULL)))
		return HAX_E_INVAL;
	if (confd_nr > CONFD_MAX)
		return HAX_E_LIMIT;
	for (uint32_t i = 0; i < confd_nr; i++) {
		if (!str_ok(confd_eps[i]))
			return HAX_E_INVAL;
	}
	if (rm_ep == NULL)
		rm_ep = "";
	if (!str_ok(rm_ep))
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	struct m0_uint128 id = {.u_hi = req_id->hi, .u_lo = req_id->lo};
	struct greq *r = req_find(h, &id);
	if (r == NULL || r->state != R_PENDING) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "entrypoint_reply: request {%llu,%llu} is unknown or already "
		     "answered", (unsigned long long)req_id->hi, (unsigned long long)req_id->lo);
		return HAX_E_NOREQ;
	}
	r->state = R_REPLYING;
	pthread_mutex_unlock(&h->mu);

	struct m0_fid *fids = NULL;
	if (confd_nr > 0) {
		fids = calloc(confd_nr, sizeof(*fids));
		if (fids == NULL) {
			pthread_mutex_lock(&h->mu);
			r->state = R_PENDING;
			pthread_mutex_unlock(&h->mu);
			return -ENOMEM;
		}
		for (uint32_t i = 0; i < confd_nr; i++)
			fids[i] = to_m0_fid(&confd_fids[i]);
	}
	struct m0_fid rm = rm_fid != NULL ? to_m0_fid(rm_fid) : M0_FID0;
	tl_in_cb++; /* the link callbacks run here, on this thread */
	m0_halon_interface_entrypoint_reply(h->hi, &id, rc, confd_nr, fids, (const char **)confd_eps,
					    quorum, &rm, rm_ep);
	tl_in_cb--;
	free(fids);
	pthread_mutex_lock(&h->mu);
	r = req_find(h, &id);
	if (r != NULL)
		req_remove(h, r);
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	return 0;
}

/* --- API: messages ------------------------------------------------------- */

int hax_glue_send(hax_glue *h, hax_link_id link, const struct hax_msg *msg, uint64_t *tag_out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "send");
	if (e != 0)
		return e;
	if (msg == NULL || tag_out == NULL) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_INVAL;
	}
	char why[256];
	e = glue_check_msg(msg, why, sizeof(why));
	if (e != 0) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "send refused (%d): %s", e, why);
		return e;
	}
	struct glink *l = link_by_id(h, link);
	if (l == NULL || l->disconnected) {
		bool was = l != NULL || link_was(h, link);
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "send: link %llu %s", (unsigned long long)link,
		     was ? "is disconnected" : "is unknown");
		return HAX_E_NOLINK;
	}
	struct get_rec **pg = NULL;
	struct fvq_rec **pf = NULL;
	if (msg->type == HAX_MSG_NVEC && msg->u.nvec.dir == HAX_NVEC_SET &&
	    msg->u.nvec.id_of_get != 0) {
		pg = find_get(l, msg);
		if (pg == NULL) {
			pthread_mutex_unlock(&h->mu);
			glog(h, HAX_LOG_WARN, "send: NVEC SET with id_of_get %llu on link %llu "
			     "answers no outstanding GET received on that link with the same %u "
			     "fids in the same order",
			     (unsigned long long)msg->u.nvec.id_of_get, (unsigned long long)link,
			     msg->nr_notes);
			return HAX_E_NVEC;
		}
	}
	if (msg->type == HAX_MSG_FVEC_REP) {
		pf = find_fvq(l, msg);
		if (pf == NULL) {
			pthread_mutex_unlock(&h->mu);
			glog(h, HAX_LOG_WARN, "send: FVEC_REP cookie {%#llx,%#llx} on link %llu "
			     "matches no outstanding FVEC_REQ on that link",
			     (unsigned long long)msg->u.fvec.cookie_addr,
			     (unsigned long long)msg->u.fvec.cookie_gen, (unsigned long long)link);
			return HAX_E_COOKIE;
		}
	}
	bool self_set = l->self && msg->type == HAX_MSG_NVEC && msg->u.nvec.dir == HAX_NVEC_SET;
	if (self_set && h->fid_n + fid_new_count(h, msg) > FIDTAB_MAX) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "send: NVEC SET on the self link brings the process fid "
		     "table over %u entries", FIDTAB_MAX);
		return HAX_E_LIMIT;
	}
	struct m0_ha_msg *m = calloc(1, sizeof(*m));
	if (m == NULL) {
		pthread_mutex_unlock(&h->mu);
		return -ENOMEM;
	}
	if (pg != NULL) {
		struct get_rec *g = *pg;
		*pg = g->next;
		free(g);
	}
	if (pf != NULL) {
		struct fvq_rec *f = *pf;
		*pf = f->next;
		free(f);
	}
	if (self_set)
		fid_note(h, msg);
	l->busy++;
	struct m0_ha_link *hl = l->hl;
	pthread_mutex_unlock(&h->mu);
	msg_to_motr(msg, m);
	uint64_t tag = 0;
	m0_halon_interface_send(h->hi, hl, m, &tag);
	free(m);
	*tag_out = tag;
	pthread_mutex_lock(&h->mu);
	link_release(h, l);
	return 0;
}

int hax_glue_delivered(hax_glue *h, hax_link_id link, uint64_t tag)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "delivered");
	if (e != 0)
		return e;
	struct glink *l = link_by_id(h, link);
	if (l == NULL) {
		bool was = link_was(h, link);
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "delivered: link %llu %s", (unsigned long long)link,
		     was ? "is disconnected" : "is unknown");
		return HAX_E_NOLINK;
	}
	const struct m0_ha_msg *m = l->motr_disc ? NULL : rx_take(l, tag);
	if (m == NULL) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "delivered: tag %llu on link %llu is not an undelivered "
		     "received message", (unsigned long long)tag, (unsigned long long)link);
		return HAX_E_NOTAG;
	}
	l->busy++;
	struct m0_ha_link *hl = l->hl;
	pthread_mutex_unlock(&h->mu);
	m0_halon_interface_delivered(h->hi, hl, m);
	pthread_mutex_lock(&h->mu);
	pthread_cond_broadcast(&h->cv);
	link_release(h, l);
	return 0;
}

int hax_glue_disconnect(hax_glue *h, hax_link_id link)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "disconnect");
	if (e != 0)
		return e;
	struct glink *l = link_by_id(h, link);
	const char *why = NULL;
	int rc = 0;
	if (l == NULL) {
		rc = link_was(h, link) ? HAX_E_ORDER : HAX_E_NOLINK;
		why = rc == HAX_E_ORDER ? "is already disconnected" : "is unknown";
	} else if (l->disconnected) {
		rc = HAX_E_ORDER;
		why = "disconnected twice";
	} else if (!l->disc_cb) {
		rc = HAX_E_ORDER;
		why = "without a prior link_is_disconnecting";
	} else if (l->n_rx > 0) {
		rc = HAX_E_UNDELIVERED;
		why = "with received messages not delivered";
	}
	if (rc != 0) {
		pthread_mutex_unlock(&h->mu);
		glog(h, HAX_LOG_WARN, "disconnect: link %llu %s", (unsigned long long)link, why);
		return rc;
	}
	l->disconnected = true;
	l->busy++;
	link_release(h, l); /* hands hl to Motr unless a call still uses it */
	return 0;
}

int hax_glue_link_endpoint(hax_glue *h, hax_link_id link, char *buf, size_t len)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "link_endpoint");
	if (e != 0)
		return e;
	if (buf == NULL) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_INVAL;
	}
	struct glink *l = link_by_id(h, link);
	if (l == NULL) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_NOLINK;
	}
	size_t n = strlen(l->ep);
	if (n + 1 > len) {
		pthread_mutex_unlock(&h->mu);
		return HAX_E_LIMIT;
	}
	memcpy(buf, l->ep, n + 1);
	pthread_mutex_unlock(&h->mu);
	return 0;
}

/* --- API: client operations (spiel) -------------------------------------- */

/*
 * Begins a client call: a known thread that is not running a callback (the
 * call blocks), the interface working, rconfc started when `need_rconfc`.
 * Counted in h->client_calls, which stop() waits to drain.
 */
static int client_enter(hax_glue *h, const char *fn, bool need_rconfc)
{
	int rc = 0;
	const char *why = NULL;
	pthread_mutex_lock(&h->mu);
	if (!thread_known(h)) {
		rc = HAX_E_THREAD;
		why = "called from a thread unknown to the implementation (adopt it first)";
	} else if (tl_in_cb > 0) {
		rc = HAX_E_THREAD;
		why = "called from a callback (client calls block)";
	} else if (h->state != S_WORKING || h->spiel == NULL) {
		rc = HAX_E_STATE;
		why = h->state == S_WORKING ? "Motr gave the interface no spiel instance"
					    : "the interface is not working";
	} else if (need_rconfc && h->rconfc != RC_ON) {
		rc = HAX_E_RCONFC;
		why = "rconfc is not started";
	}
	if (rc == 0)
		h->client_calls++;
	pthread_mutex_unlock(&h->mu);
	if (rc != 0)
		glog(h, HAX_LOG_WARN, "%s: %s", fn, why);
	return rc;
}

/* Ends a client call: its result, or -ESHUTDOWN when stop() began meanwhile. */
static int client_leave(hax_glue *h, int rc)
{
	pthread_mutex_lock(&h->mu);
	h->client_calls--;
	bool stopping = h->state != S_WORKING;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	return stopping ? -ESHUTDOWN : rc;
}

static bool fid_zero(const struct hax_fid *f)
{
	return f->container == 0 && f->key == 0;
}

/* rconfc reached M0_RCS_IDLE (under the rconfc lock, on a Motr thread). */
static void on_rconfc_ready(struct m0_rconfc *rconfc)
{
	(void)rconfc;
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	if (h->rconfc == RC_STARTING)
		h->rconfc = RC_ON;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
}

/* rconfc reached M0_RCS_FAILURE (under the rconfc lock, on a Motr thread). */
static void on_rconfc_fatal(struct m0_rconfc *rconfc)
{
	hax_glue *h = cb_handle();
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	bool was = h->rconfc == RC_STARTING || h->rconfc == RC_ON;
	if (was)
		h->rconfc = RC_FAILED;
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	if (was)
		glog(h, HAX_LOG_ERROR, "rconfc failed (%d): client calls need a new rconfc start",
		     rconfc->rc_sm.sm_rc);
}

/* Stops and finalises a failed rconfc, so that it can start again. */
static void rconfc_reap(hax_glue *h, struct m0_spiel *spiel)
{
	spiel_rconfc_stop(spiel);
	pthread_mutex_lock(&h->mu);
	h->rconfc = RC_OFF;
	pthread_mutex_unlock(&h->mu);
}

int hax_glue_rconfc_start(hax_glue *h, const struct hax_fid *profile)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "rconfc_start", false);
	if (rc != 0)
		return rc;
	if (profile == NULL || fid_type(profile) != 'p')
		return client_leave(h, HAX_E_INVAL);
	struct m0_spiel *spiel = h->spiel;
	struct m0_rconfc *rconfc = &spiel->spl_rconfc;
	pthread_mutex_lock(&h->mu);
	enum rconfc_state st = h->rconfc;
	struct timespec dl = deadline_in(h->rconfc_timeout_ms);
	if (st == RC_ON || st == RC_STOPPING) {
		pthread_mutex_unlock(&h->mu);
		return client_leave(h, st == RC_ON ? -EALREADY : -EBUSY);
	}
	if (st == RC_OFF)
		h->rconfc = RC_STARTING;
	pthread_mutex_unlock(&h->mu);
	if (st == RC_FAILED) {
		glog(h, HAX_LOG_INFO, "rconfc_start: the failed rconfc is stopped first");
		rconfc_reap(h, spiel);
		pthread_mutex_lock(&h->mu);
		h->rconfc = RC_STARTING;
		pthread_mutex_unlock(&h->mu);
		st = RC_OFF;
	}
	if (st == RC_OFF) {
		/* m0_spiel_cmd_profile_set() + the start of m0_spiel_rconfc_start(),
		 * with callbacks instead of its unbounded wait. */
		spiel->spl_core.spc_profile = to_m0_fid(profile);
		rc = m0_rconfc_init(rconfc, &spiel->spl_core.spc_profile,
				    m0_locality0_get()->lo_grp, spiel->spl_core.spc_rmachine, NULL,
				    on_rconfc_ready);
		if (rc == 0) {
			rc = m0_rconfc_start(rconfc);
			if (rc == 0) {
				m0_rconfc_lock(rconfc);
				m0_rconfc_fatal_cb_set(rconfc, on_rconfc_fatal);
				m0_rconfc_unlock(rconfc);
			} else {
				m0_rconfc_fini(rconfc);
			}
		}
		if (rc != 0) {
			pthread_mutex_lock(&h->mu);
			h->rconfc = RC_OFF;
			pthread_mutex_unlock(&h->mu);
			glog(h, HAX_LOG_WARN, "rconfc did not start: %d", rc);
			return client_leave(h, rc);
		}
	}
	/* Wait (bounded) for the start begun here or by an earlier call. */
	pthread_mutex_lock(&h->mu);
	while (h->rconfc == RC_STARTING && h->state == S_WORKING &&
	       pthread_cond_timedwait(&h->cv, &h->mu, &dl) != ETIMEDOUT)
		;
	st = h->rconfc;
	pthread_mutex_unlock(&h->mu);
	if (st == RC_ON) {
		glog(h, HAX_LOG_INFO, "rconfc started, profile " FIDF, FIDP(profile));
		return client_leave(h, 0);
	}
	if (st == RC_FAILED) {
		m0_rconfc_lock(rconfc);
		rc = rconfc->rc_sm.sm_rc;
		m0_rconfc_unlock(rconfc);
		rconfc_reap(h, spiel);
		glog(h, HAX_LOG_WARN, "rconfc did not start (profile " FIDF "): %d", FIDP(profile),
		     rc);
		return client_leave(h, rc != 0 ? rc : -EIO);
	}
	glog(h, HAX_LOG_WARN, "rconfc not started within %u ms (no confd quorum or read lock "
	     "yet); the start goes on", h->rconfc_timeout_ms);
	return client_leave(h, -ETIMEDOUT);
}

int hax_glue_rconfc_stop(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "rconfc_stop", false);
	if (rc != 0)
		return rc;
	pthread_mutex_lock(&h->mu);
	if (h->rconfc != RC_ON && h->rconfc != RC_FAILED) {
		rc = h->rconfc == RC_OFF ? 0 : -EBUSY;
		pthread_mutex_unlock(&h->mu);
		return client_leave(h, rc);
	}
	/* No new call gets the confc; the ones using it end first. */
	h->rconfc = RC_STOPPING;
	while (h->client_calls > 1)
		pthread_cond_wait(&h->cv, &h->mu);
	struct m0_spiel *spiel = h->spiel;
	pthread_mutex_unlock(&h->mu);
	rconfc_reap(h, spiel);
	glog(h, HAX_LOG_INFO, "rconfc stopped");
	return client_leave(h, 0);
}

int hax_glue_rconfc_ready(hax_glue *h)
{
	if (h == NULL)
		return 0;
	pthread_mutex_lock(&h->mu);
	bool on = h->rconfc == RC_ON;
	pthread_mutex_unlock(&h->mu);
	return on ? 1 : 0;
}

typedef int (*sns_fn)(struct m0_spiel *, const struct m0_fid *);
typedef int (*sns_status_fn)(struct m0_spiel *, const struct m0_fid *,
			     struct m0_spiel_repreb_status **);

int hax_glue_sns(hax_glue *h, uint32_t kind, uint32_t op, const struct hax_fid *pool)
{
	static const sns_fn fns[2][4] = {
		[HAX_SNS_REPAIR] = {m0_spiel_sns_repair_start, m0_spiel_sns_repair_abort,
				    m0_spiel_sns_repair_quiesce, m0_spiel_sns_repair_continue},
		[HAX_SNS_REBALANCE] = {m0_spiel_sns_rebalance_start, m0_spiel_sns_rebalance_abort,
				       m0_spiel_sns_rebalance_quiesce,
				       m0_spiel_sns_rebalance_continue},
	};
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "sns", true);
	if (rc != 0)
		return rc;
	if (pool == NULL || fid_zero(pool) || kind > HAX_SNS_REBALANCE || op > HAX_SNS_CONTINUE)
		return client_leave(h, HAX_E_INVAL);
	struct m0_fid f = to_m0_fid(pool);
	rc = fns[kind][op](h->spiel, &f);
	return client_leave(h, rc);
}

int hax_glue_sns_status(hax_glue *h, uint32_t kind, const struct hax_fid *pool,
			struct hax_sns_status *out, uint32_t cap, uint32_t *nr_out)
{
	/* The rebalance status is the rebalance status call (the original
	 * asked for repair's in both cases). */
	static const sns_status_fn fns[2] = {
		[HAX_SNS_REPAIR] = m0_spiel_sns_repair_status,
		[HAX_SNS_REBALANCE] = m0_spiel_sns_rebalance_status,
	};
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "sns_status", true);
	if (rc != 0)
		return rc;
	if (pool == NULL || fid_zero(pool) || nr_out == NULL || kind > HAX_SNS_REBALANCE ||
	    (out == NULL && cap > 0))
		return client_leave(h, HAX_E_INVAL);
	struct m0_fid f = to_m0_fid(pool);
	struct m0_spiel_repreb_status *st = NULL;
	rc = fns[kind](h->spiel, &f, &st);
	uint32_t n = rc > 0 ? (uint32_t)rc : 0;
	if (rc >= 0)
		rc = n > cap ? HAX_E_LIMIT : 0;
	rc = client_leave(h, rc);
	if (rc == 0) {
		for (uint32_t i = 0; i < n; i++) {
			out[i] = (struct hax_sns_status){
				.fid = to_hax_fid(&st[i].srs_fid),
				.state = (uint32_t)st[i].srs_state,
				.progress = st[i].srs_progress,
			};
		}
	}
	if (rc == 0 || rc == HAX_E_LIMIT)
		*nr_out = n;
	m0_free(st);
	return rc;
}

int hax_glue_pver_status(hax_glue *h, const struct hax_fid *pver, struct hax_pver_info *out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "pver_status", true);
	if (rc != 0)
		return rc;
	if (pver == NULL || fid_zero(pver) || out == NULL)
		return client_leave(h, HAX_E_INVAL);
	/* Motr asserts on a fid of another type, and on a formulaic pool
	 * version: neither has a status. */
	if (fid_type(pver) != 'v')
		return client_leave(h, -ENOENT);
	struct m0_fid f = to_m0_fid(pver);
	enum m0_conf_pver_kind kind;
	rc = m0_conf_pver_fid_read(&f, &kind, NULL, NULL);
	if (rc == 0 && kind == M0_CONF_PVER_FORMULAIC)
		rc = -EINVAL;
	struct m0_conf_pver_info info = {0};
	if (rc == 0)
		rc = m0_spiel_conf_pver_status(h->spiel, &f, &info);
	rc = client_leave(h, rc);
	if (rc == 0) {
		*out = (struct hax_pver_info){
			.fid = to_hax_fid(&info.cpi_fid),
			.state = (uint32_t)info.cpi_state,
			.data_units = info.cpi_attr.pa_N,
			.parity_units = info.cpi_attr.pa_K,
			.pool_width = info.cpi_attr.pa_P,
			.unit_size = info.cpi_attr.pa_unit_size,
		};
	}
	return rc;
}

int hax_glue_fs_stats(hax_glue *h, struct hax_fs_stats *out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "fs_stats", true);
	if (rc != 0)
		return rc;
	if (out == NULL)
		return client_leave(h, HAX_E_INVAL);
	struct m0_fs_stats st = {0};
	rc = m0_spiel_filesystem_stats_fetch(h->spiel, &st);
	rc = client_leave(h, rc);
	if (rc == 0) {
		*out = (struct hax_fs_stats){
			.free_seg = st.fs_free_seg,
			.total_seg = st.fs_total_seg,
			.free_disk = st.fs_free_disk,
			.avail_disk = st.fs_avail_disk,
			.total_disk = st.fs_total_disk,
			.svc_total = st.fs_svc_total,
			.svc_replied = st.fs_svc_replied,
		};
	}
	return rc;
}

int hax_glue_proc_counters(hax_glue *h, const struct hax_fid *ios, struct hax_fid *proc_fid_out,
			   struct hax_pver_count *out, uint32_t cap, uint32_t *nr_out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = client_enter(h, "proc_counters", true);
	if (rc != 0)
		return rc;
	if (ios == NULL || fid_zero(ios) || proc_fid_out == NULL || nr_out == NULL ||
	    (out == NULL && cap > 0))
		return client_leave(h, HAX_E_INVAL);
	struct m0_fid f = to_m0_fid(ios);
	struct m0_proc_counter *cs = NULL;
	rc = m0_spiel_count_stats_init(&cs);
	if (rc == 0) {
		rc = m0_spiel_proc_counters_fetch(h->spiel, &f, cs);
		if (rc == 0)
			rc = cs->pc_rc;
	}
	uint32_t n = rc == 0 ? cs->pc_cnt : 0;
	if (rc == 0 && n > cap)
		rc = HAX_E_LIMIT;
	rc = client_leave(h, rc);
	if (rc == 0) {
		for (uint32_t i = 0; i < n; i++) {
			out[i] = (struct hax_pver_count){
				.pver = to_hax_fid(&cs->pc_bckey[i]->sbk_fid),
				.user_id = cs->pc_bckey[i]->sbk_user_id,
				.byte_count = cs->pc_bcrec[i]->sbr_byte_count,
				.object_count = cs->pc_bcrec[i]->sbr_object_count,
			};
		}
		*proc_fid_out = to_hax_fid(&cs->pc_proc_fid);
	}
	if (rc == 0 || rc == HAX_E_LIMIT)
		*nr_out = n;
	m0_spiel_count_stats_fini(cs);
	return rc;
}
