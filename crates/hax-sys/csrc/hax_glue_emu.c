/*
 * hax_glue_emu.c - the emulator of Motr's m0_halon_interface behind
 * hax_glue.h: lifecycle, entrypoint, links, tags, delivery, the disconnect
 * handshake and the contract checks.
 *
 * Threads. The handler thread plays Motr's locality 0: it runs every
 * asynchronous callback, one at a time, from a FIFO of events, so per-link
 * order follows from enqueue order. The network thread (emu_net.c) turns
 * frames into events. Callbacks never run with h->mu held: a callback may call
 * any API function.
 *
 * Where real Motr asserts, the emulator refuses the call with a code, counts
 * it and reports it through contract_violation; where Motr would hang in
 * stop(), the emulator waits up to a deadline, reports, and forces its way.
 */
#include "emu.h"
#include "glue_check.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_STOP_TIMEOUT_MS 5000u
#define DEFAULT_START_TIMEOUT_MS 30000u
#define FIDTAB_SLOTS 8192u /* power of two, twice EMU_FIDTAB_MAX */
/* Motr's own entrypoint request carries an empty git rev id. */
#define GIT_REV_ID ""

/* Motr's enum m0_conf_ha_process_event / _service_event / types. */
enum { EV_STARTING = 0, EV_STARTED = 1, EV_STOPPING = 2, EV_STOPPED = 3 };
enum { PROCESS_M0D = 3, SERVICE_RMS = 4, SERVICE_HA = 6 };

struct emu_logline {
	struct emu_logline *next;
	void (*cb)(void *, int32_t, const char *);
	void *user;
	int level;
	char text[];
};

/*
 * Log lines wait in a queue of the thread that made them, and that thread
 * hands them out once it has dropped h->mu: the log callback never runs
 * inside another thread's API call (where its caller may hold a lock).
 */
static _Thread_local struct emu_logline *tl_logs_head;
static _Thread_local struct emu_logline *tl_logs_tail;

struct emu_fidslot {
	struct hax_fid fid;
	uint32_t state;
	uint32_t used;
};

/* State of a received tag, from delivery to the handler to delivered(). */
enum { IN_PENDING = 1, IN_UP = 2, IN_DONE = 3 };

/* A message hax sent and the peer has not confirmed in order yet. */
struct emu_out {
	uint32_t len;
	bool confirmed;
	uint8_t data[];
};

/* An NVEC GET passed up on a link and not answered yet. */
struct emu_get {
	struct emu_get *next;
	uint64_t id;
	uint32_t nr;
	struct hax_fid fids[];
};

/* A FVEC_REQ passed up on a link and not answered yet. */
struct emu_fvq {
	struct emu_fvq *next;
	uint64_t addr;
	uint64_t gen;
};

struct emu_link {
	hax_link_id id;
	bool self;
	bool announced;    /* link_is_disconnecting queued */
	bool disc_cb;      /* ... and its callback has begun */
	bool disconnected; /* disconnect() accepted (or forced by stop) */
	/* link_connected is running on the replying thread: the user does not
	 * know the link yet, so link_is_disconnecting waits for its return. */
	bool connecting;
	const char *deferred_why;
	struct hax_fid process_fid;
	char ep[HAX_EP_MAX];
	struct emu_conn *conn;
	uint64_t out_base; /* oldest send not confirmed in order */
	uint64_t out_next;
	uint64_t tx_next;  /* next tag to queue on conn */
	struct emu_ring outq; /* struct emu_out *, tags out_base, +2, ... */
	uint64_t in_base;     /* oldest received tag not delivered in order */
	uint64_t in_next;
	struct emu_ring inq; /* IN_*, tags in_base, +2, ... */
	struct emu_get *gets;
	struct emu_fvq *fvqs;
};

struct emu_req {
	struct emu_req *next;
	uint64_t n; /* req_id = {0, n} */
	bool up;    /* entrypoint_request callback has begun */
	bool self;
	struct emu_conn *conn;
	bool first;
	uint64_t generation;
	struct hax_fid process_fid;
	uint64_t pid;
	struct hax_u128 cookie_expected;
	uint64_t link_id;
	uint64_t next_out_tag;
	uint64_t next_in_tag;
	char ep[EMU_STR_MAX + 1];
	char git[EMU_STR_MAX + 1];
};

enum ev_kind { EV_EPREQ = 1, EV_RECV, EV_DELIVERED, EV_DISCONNECTING, EV_FINISH };

struct emu_ev {
	struct emu_ev *next;
	uint8_t kind;
	hax_link_id link;
	uint64_t a; /* EPREQ: request n; RECV: tag; DELIVERED: first tag */
	uint64_t b; /* DELIVERED: last tag */
	uint32_t len;
	uint8_t data[]; /* RECV: the encoded message */
};

/* A contract violation found under the lock, reported after unlocking. */
struct vio {
	int code;
	void (*cb)(void *, int32_t, const char *);
	void *user;
	char detail[320];
};

/* --- small helpers ------------------------------------------------------ */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timespec deadline_after(uint32_t ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

/* Waits on wcv; false once the deadline has passed. Returns at once after
 * handing out queued log lines, so the caller checks its condition again. */
static bool wait_until(hax_glue *h, const struct timespec *dl)
{
	if (emu_logs_pending()) {
		emu_unlock(h);
		pthread_mutex_lock(&h->mu);
		return true;
	}
	h->waiters++;
	int rc = pthread_cond_timedwait(&h->wcv, &h->mu, dl);
	h->waiters--;
	return rc != ETIMEDOUT;
}

static void notify_waiters(hax_glue *h)
{
	if (h->waiters > 0)
		pthread_cond_broadcast(&h->wcv);
}

static int ring_push(struct emu_ring *r, uintptr_t v)
{
	if (r->len == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		uintptr_t *nv = malloc(cap * sizeof(*nv));
		if (nv == NULL)
			return -1;
		for (size_t i = 0; i < r->len; i++)
			nv[i] = r->v[(r->head + i) & (r->cap - 1)];
		free(r->v);
		r->v = nv;
		r->cap = cap;
		r->head = 0;
	}
	r->v[(r->head + r->len) & (r->cap - 1)] = v;
	r->len++;
	return 0;
}

static uintptr_t *ring_at(struct emu_ring *r, size_t i)
{
	return &r->v[(r->head + i) & (r->cap - 1)];
}

static uintptr_t ring_pop(struct emu_ring *r)
{
	uintptr_t v = r->v[r->head];
	r->head = (r->head + 1) & (r->cap - 1);
	r->len--;
	return v;
}

static void ring_free(struct emu_ring *r)
{
	free(r->v);
	memset(r, 0, sizeof(*r));
}

static bool fid_eq(const struct hax_fid *a, const struct hax_fid *b)
{
	return a->container == b->container && a->key == b->key;
}

static uint8_t fid_type(const struct hax_fid *f)
{
	return (uint8_t)(f->container >> 56);
}

#define FIDF "%#llx:%#llx"
#define FIDP(f) (unsigned long long)(f)->container, (unsigned long long)(f)->key

/* --- logging and violations --------------------------------------------- */

void emu_logf(hax_glue *h, int level, const char *fmt, ...)
{
	if (h->cbs.log == NULL)
		return;
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	size_t len = strlen(buf);
	struct emu_logline *l = malloc(sizeof(*l) + len + 1);
	if (l == NULL)
		return;
	l->next = NULL;
	l->cb = h->cbs.log;
	l->user = h->cbs.user;
	l->level = level;
	memcpy(l->text, buf, len + 1);
	if (tl_logs_tail != NULL)
		tl_logs_tail->next = l;
	else
		tl_logs_head = l;
	tl_logs_tail = l;
}

bool emu_logs_pending(void)
{
	return tl_logs_head != NULL;
}

void emu_unlock(hax_glue *h)
{
	struct emu_logline *l = tl_logs_head;
	tl_logs_head = tl_logs_tail = NULL;
	pthread_mutex_unlock(&h->mu);
	while (l != NULL) {
		struct emu_logline *next = l->next;
		l->cb(l->user, l->level, l->text);
		free(l);
		l = next;
	}
}

static void count_violation(hax_glue *h)
{
	__atomic_add_fetch(&h->violations, 1, __ATOMIC_RELAXED);
}

__attribute__((format(printf, 4, 5))) static int violate(hax_glue *h, struct vio *v, int code,
							  const char *fmt, ...)
{
	count_violation(h);
	v->code = code;
	v->cb = h->cbs.contract_violation;
	v->user = h->cbs.user;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v->detail, sizeof(v->detail), fmt, ap);
	va_end(ap);
	emu_logf(h, HAX_LOG_ERROR, "contract violation %d: %s", code, v->detail);
	return code;
}

static void vio_report(const struct vio *v)
{
	if (v->code != 0 && v->cb != NULL)
		v->cb(v->user, v->code, v->detail);
}

/* Unlocks, then reports what the call found. */
static int leave(hax_glue *h, const struct vio *v, int rc)
{
	emu_unlock(h);
	vio_report(v);
	return rc;
}

/* --- threads ------------------------------------------------------------ */

static bool thread_known(const hax_glue *h)
{
	pthread_t me = pthread_self();
	if (pthread_equal(me, h->init_tid))
		return true;
	if (h->threads_up && (pthread_equal(me, h->handler_tid) || pthread_equal(me, h->net_tid)))
		return true;
	for (size_t i = 0; i < h->n_adopted; i++) {
		if (pthread_equal(me, h->adopted[i]))
			return true;
	}
	return false;
}

static int thread_refused(hax_glue *h, const char *fn)
{
	count_violation(h);
	emu_logf(h, HAX_LOG_ERROR,
		 "%s: called from a thread unknown to the implementation (adopt it first)", fn);
	emu_unlock(h);
	return HAX_E_THREAD;
}

/* Locks h for an API call that needs a known thread and a running handle.
 * Returns 0 with h->mu held, or an error with it released. */
static int enter(hax_glue *h, const char *fn)
{
	pthread_mutex_lock(&h->mu);
	if (!thread_known(h))
		return thread_refused(h, fn);
	if (h->state == S_INIT) {
		emu_logf(h, HAX_LOG_WARN, "%s: the interface is not started", fn);
		emu_unlock(h);
		return HAX_E_STATE;
	}
	return 0;
}

/*
 * Client calls block, so the threads that run callbacks may not make them;
 * and they need a started interface. Takes and releases h->mu.
 */
int emu_client_enter(hax_glue *h, const char *fn)
{
	pthread_mutex_lock(&h->mu);
	if (!thread_known(h))
		return thread_refused(h, fn);
	pthread_t me = pthread_self();
	if (h->threads_up && (pthread_equal(me, h->handler_tid) || pthread_equal(me, h->net_tid))) {
		struct vio v = {0};
		violate(h, &v, HAX_E_THREAD,
			"%s: a client call blocks; it must not run on a thread that runs callbacks",
			fn);
		return leave(h, &v, HAX_E_THREAD);
	}
	if (h->state != S_WORKING) {
		emu_logf(h, HAX_LOG_WARN, "%s: the interface is not running", fn);
		emu_unlock(h);
		return HAX_E_STATE;
	}
	emu_unlock(h);
	return 0;
}

/* --- events ------------------------------------------------------------- */

static struct emu_ev *ev_new(uint8_t kind, hax_link_id link, size_t len)
{
	struct emu_ev *ev = malloc(sizeof(*ev) + len);
	if (ev == NULL)
		return NULL;
	ev->next = NULL;
	ev->kind = kind;
	ev->link = link;
	ev->a = ev->b = 0;
	ev->len = (uint32_t)len;
	return ev;
}

static void ev_push(hax_glue *h, struct emu_ev *ev)
{
	if (h->evq_tail != NULL)
		h->evq_tail->next = ev;
	else
		h->evq_head = ev;
	h->evq_tail = ev;
	if (h->handler_sleeping)
		pthread_cond_signal(&h->hcv);
}

static bool ev_simple(hax_glue *h, uint8_t kind, hax_link_id link, uint64_t a, uint64_t b)
{
	struct emu_ev *ev = ev_new(kind, link, 0);
	if (ev == NULL) {
		emu_logf(h, HAX_LOG_ERROR, "out of memory: event %u on link %llu lost", kind,
			 (unsigned long long)link);
		return false;
	}
	ev->a = a;
	ev->b = b;
	ev_push(h, ev);
	return true;
}

/* --- links -------------------------------------------------------------- */

static size_t link_index(const hax_glue *h, hax_link_id id, bool *found)
{
	size_t lo = 0, hi = h->n_links;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (h->links[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < h->n_links && h->links[lo]->id == id;
	return lo;
}

static struct emu_link *link_find(const hax_glue *h, hax_link_id id)
{
	bool found;
	size_t i = link_index(h, id, &found);
	return found ? h->links[i] : NULL;
}

/* Ids are handed out in increasing order, so a past id that is no longer in
 * the table belongs to a link that is gone. */
static bool link_was(const hax_glue *h, hax_link_id id)
{
	return id != 0 && id < h->next_link_id;
}

static struct emu_link *link_new(hax_glue *h, const struct emu_req *req, uint64_t out_next,
				 uint64_t in_next)
{
	if (h->n_links == h->cap_links) {
		size_t cap = h->cap_links ? h->cap_links * 2 : 16;
		struct emu_link **nl = realloc(h->links, cap * sizeof(*nl));
		if (nl == NULL)
			return NULL;
		h->links = nl;
		h->cap_links = cap;
	}
	struct emu_link *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return NULL;
	l->id = h->next_link_id++;
	l->self = req->self;
	l->process_fid = req->process_fid;
	snprintf(l->ep, sizeof(l->ep), "%s", req->ep);
	l->out_base = l->out_next = out_next;
	l->in_base = l->in_next = in_next;
	h->links[h->n_links++] = l; /* ids grow, so the table stays sorted */
	if (l->self)
		h->self = l;
	return l;
}

static void link_free(struct emu_link *l)
{
	while (l->outq.len > 0)
		free((void *)ring_pop(&l->outq));
	ring_free(&l->outq);
	ring_free(&l->inq);
	for (struct emu_get *g = l->gets, *n; g != NULL; g = n) {
		n = g->next;
		free(g);
	}
	for (struct emu_fvq *f = l->fvqs, *n; f != NULL; f = n) {
		n = f->next;
		free(f);
	}
	free(l);
}

static void link_remove(hax_glue *h, struct emu_link *l)
{
	bool found;
	size_t i = link_index(h, l->id, &found);
	if (found) {
		memmove(&h->links[i], &h->links[i + 1], (h->n_links - i - 1) * sizeof(h->links[0]));
		h->n_links--;
	}
	if (h->self == l)
		h->self = NULL;
	link_free(l);
}

static void send_nolink(hax_glue *h, struct emu_conn *c, hax_link_id id)
{
	uint8_t *p = emu_conn_frame(h, c, F_NOLINK, 8);
	if (p != NULL)
		emu_put_u64(p, id);
}

static void send_delivered(hax_glue *h, struct emu_conn *c, hax_link_id id, uint64_t tag)
{
	uint8_t *p = emu_conn_frame(h, c, F_DELIVERED_R, 16);
	if (p != NULL) {
		emu_put_u64(p, id);
		emu_put_u64(p + 8, tag);
	}
}

static void send_msg_frame(hax_glue *h, struct emu_conn *c, hax_link_id id, uint64_t tag,
			   const struct emu_out *o)
{
	uint8_t *p = emu_conn_frame(h, c, F_MSG_R, 16 + (size_t)o->len);
	if (p != NULL) {
		emu_put_u64(p, id);
		emu_put_u64(p + 8, tag);
		memcpy(p + 16, o->data, o->len);
	}
}

/* Queues l's messages from tx_next on, up to EMU_PUMP_HIGH bytes of output;
 * true when nothing is left behind. */
static bool link_pump(hax_glue *h, struct emu_link *l)
{
	struct emu_conn *c = l->conn;
	if (l->disconnected)
		return true; /* stopping: what is not out stays not delivered */
	if (l->tx_next < l->out_base)
		l->tx_next = l->out_base;
	while (l->tx_next < l->out_next) {
		if (c->doomed || c->out.len + c->wr_pending >= EMU_PUMP_HIGH)
			return false;
		const struct emu_out *o =
			(const struct emu_out *)*ring_at(&l->outq, (size_t)(l->tx_next - l->out_base) / 2);
		if (!o->confirmed)
			send_msg_frame(h, c, l->id, l->tx_next, o);
		l->tx_next += 2;
	}
	return true;
}

void emu_pump_conn(hax_glue *h, struct emu_conn *c)
{
	bool done = true;
	for (size_t i = 0; i < h->n_links; i++) {
		if (h->links[i]->conn == c)
			done &= link_pump(h, h->links[i]);
	}
	c->starved = !done;
}

/* Attaches c to l and resends, in tag order, what the peer has not
 * confirmed: its side keeps only what it has already received. */
static void link_attach(hax_glue *h, struct emu_link *l, struct emu_conn *c)
{
	l->conn = c;
	l->tx_next = l->out_base;
	if (!link_pump(h, l))
		c->starved = true;
	emu_logf(h, HAX_LOG_INFO, "link %llu: peer attached on connection %llu (%s), %zu unconfirmed",
		 (unsigned long long)l->id, (unsigned long long)c->id, c->peer, l->outq.len);
}

static void announce(hax_glue *h, struct emu_link *l, const char *why)
{
	if (l->announced || l->disconnected)
		return;
	if (l->connecting) {
		l->deferred_why = why;
		return;
	}
	if (!ev_simple(h, EV_DISCONNECTING, l->id, 0, 0))
		return;
	l->announced = true;
	emu_logf(h, HAX_LOG_INFO, "link %llu (%s, process " FIDF ") is disconnecting: %s",
		 (unsigned long long)l->id, l->ep, FIDP(&l->process_fid), why);
}

/* A message from the self link's m0d side (the emulator) to hax. */
static void self_recv(hax_glue *h, const uint8_t *data, size_t len)
{
	struct emu_link *l = h->self;
	if (l == NULL || l->announced || l->disconnected)
		return;
	struct emu_ev *ev = ev_new(EV_RECV, l->id, len);
	if (ev == NULL || ring_push(&l->inq, IN_PENDING) != 0) {
		free(ev);
		emu_logf(h, HAX_LOG_ERROR, "out of memory: self-link message lost");
		return;
	}
	ev->a = l->in_next;
	l->in_next += 2;
	memcpy(ev->data, data, len);
	ev_push(h, ev);
}

/* A process event (svc NULL) or an event of one of hax's own services, as
 * the interface posts them to its self link. */
static void self_event(hax_glue *h, const struct hax_fid *svc, uint64_t svc_type, uint64_t event)
{
	uint8_t buf[EMU_MSG_HDR + 24];
	struct emu_wr w = {buf};
	static const struct hax_fid zero = {0, 0};
	wr_fid(&w, svc != NULL ? svc : &h->process_fid);
	wr_fid(&w, svc != NULL ? &h->process_fid : &zero);
	wr_fid(&w, svc != NULL ? svc : &zero);
	wr_u64(&w, now_ns());
	wr_u64(&w, 0);
	wr_u32(&w, svc != NULL ? HAX_MSG_EVENT_SERVICE : HAX_MSG_EVENT_PROCESS);
	wr_u64(&w, event);
	wr_u64(&w, svc != NULL ? svc_type : PROCESS_M0D);
	wr_u64(&w, (uint64_t)getpid());
	self_recv(h, buf, sizeof(buf));
}

/* --- process fid table (Motr's hii_nvec) -------------------------------- */

static size_t fid_slot(const hax_glue *h, const struct hax_fid *f)
{
	uint64_t x = f->container * 0x9e3779b97f4a7c15ull ^ f->key * 0xc2b2ae3d27d4eb4full;
	size_t i = (size_t)(x >> 40) & (FIDTAB_SLOTS - 1);
	while (h->fidtab[i].used && !fid_eq(&h->fidtab[i].fid, f))
		i = (i + 1) & (FIDTAB_SLOTS - 1);
	return i;
}

/* Process fids of m that the table does not hold yet, each counted once. */
static size_t fid_new_count(const hax_glue *h, const struct hax_msg *m)
{
	size_t n = 0;
	for (uint32_t i = 0; i < m->nr_notes; i++) {
		const struct hax_fid *f = &m->notes[i].id;
		if (fid_type(f) != 'r' || h->fidtab[fid_slot(h, f)].used)
			continue;
		bool dup = false;
		for (uint32_t j = 0; j < i && !dup; j++)
			dup = fid_eq(&m->notes[j].id, f);
		n += !dup;
	}
	return n;
}

/*
 * The m0d side of the self link receives an NVEC SET: a FAILED note for a
 * process fid seen before fences every link that fid's requests created.
 */
static void self_failure_check(hax_glue *h, const struct hax_msg *m)
{
	for (uint32_t i = 0; i < m->nr_notes; i++) {
		const struct hax_note *no = &m->notes[i];
		if (fid_type(&no->id) != 'r')
			continue;
		struct emu_fidslot *s = &h->fidtab[fid_slot(h, &no->id)];
		bool just_added = false;
		if (!s->used) {
			s->used = 1;
			s->fid = no->id;
			s->state = HAX_NC_UNKNOWN;
			h->fid_n++;
			just_added = true;
		}
		if (no->state == s->state && m->u.nvec.ignore_same)
			continue;
		if (no->state == HAX_NC_FAILED && !just_added) {
			emu_logf(h, HAX_LOG_INFO, "process " FIDF " FAILED: disconnecting its links",
				 FIDP(&no->id));
			for (size_t k = 0; k < h->n_links; k++) {
				if (fid_eq(&h->links[k]->process_fid, &no->id))
					announce(h, h->links[k], "its process was declared FAILED");
			}
		}
		s->state = no->state;
	}
}

/* What the emulated m0d does with a message hax sends on the self link. */
static void self_model(hax_glue *h, struct emu_link *l, const struct hax_msg *m, uint64_t tag)
{
	if (m->type == HAX_MSG_KEEPALIVE_REQ) {
		uint8_t buf[EMU_MSG_HDR + 24];
		struct emu_wr w = {buf};
		memset(buf, 0, 48);
		w.p += 48;
		wr_u64(&w, now_ns());
		wr_u64(&w, 0);
		wr_u32(&w, HAX_MSG_KEEPALIVE_REP);
		wr_u64(&w, m->u.keepalive.id.hi);
		wr_u64(&w, m->u.keepalive.id.lo);
		wr_u64(&w, ++h->ka_counter);
		self_recv(h, buf, sizeof(buf));
	} else if (m->type == HAX_MSG_NVEC && m->u.nvec.dir == HAX_NVEC_GET) {
		/* hax's own confc knows no object: Motr answers ONLINE. */
		size_t len = EMU_MSG_HDR + 28 + (size_t)m->nr_notes * EMU_NOTE_WIRE;
		uint8_t *buf = malloc(len);
		if (buf != NULL) {
			struct emu_wr w = {buf};
			memset(buf, 0, 48);
			w.p += 48;
			wr_u64(&w, now_ns());
			wr_u64(&w, 0);
			wr_u32(&w, HAX_MSG_NVEC);
			wr_u64(&w, HAX_NVEC_SET);
			wr_u64(&w, m->u.nvec.id_of_get);
			wr_u64(&w, 0);
			wr_u32(&w, m->nr_notes);
			for (uint32_t i = 0; i < m->nr_notes; i++) {
				wr_fid(&w, &m->notes[i].id);
				wr_u32(&w, HAX_NC_ONLINE);
			}
			self_recv(h, buf, len);
			free(buf);
		}
	} else if (m->type == HAX_MSG_NVEC && m->u.nvec.dir == HAX_NVEC_SET) {
		self_failure_check(h, m);
	}
	ev_simple(h, EV_DELIVERED, l->id, tag, tag);
}

/* --- checks of outgoing messages ---------------------------------------- */

/* Checks that need no link. A message type out of range is a plain bad
 * argument; every other broken rule is one Motr would assert on. */
static int check_msg(hax_glue *h, struct vio *v, const struct hax_msg *m)
{
	char why[256];
	int rc = glue_check_msg(m, why, sizeof(why));
	if (rc == 0 || rc == HAX_E_INVAL)
		return rc;
	return violate(h, v, rc, "send: %s", why);
}

static struct emu_get **find_get(struct emu_link *l, const struct hax_msg *m)
{
	for (struct emu_get **pg = &l->gets; *pg != NULL; pg = &(*pg)->next) {
		struct emu_get *g = *pg;
		if (g->id != m->u.nvec.id_of_get || g->nr != m->nr_notes)
			continue;
		bool same = true;
		for (uint32_t i = 0; i < g->nr && same; i++)
			same = fid_eq(&g->fids[i], &m->notes[i].id);
		if (same)
			return pg;
	}
	return NULL;
}

static struct emu_fvq **find_fvq(struct emu_link *l, const struct hax_msg *m)
{
	for (struct emu_fvq **pf = &l->fvqs; *pf != NULL; pf = &(*pf)->next) {
		if ((*pf)->addr == m->u.fvec.cookie_addr && (*pf)->gen == m->u.fvec.cookie_gen)
			return pf;
	}
	return NULL;
}

/* --- API: version and lifecycle ----------------------------------------- */

uint32_t hax_glue_abi_version(void)
{
	return HAX_GLUE_ABI_VERSION;
}

const char *hax_glue_backend(void)
{
	return "emulator";
}

uint64_t hax_glue_violations(hax_glue *h)
{
	return h == NULL ? 0 : __atomic_load_n(&h->violations, __ATOMIC_RELAXED);
}

/* Reads "name=N" (milliseconds, at most an hour) from the debug options. */
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

/* Reads "name=N" (a count, 1 ..= 1000000) from the debug options. */
static uint32_t opt_count(const char *opts, const char *name, uint32_t dflt)
{
	uint32_t v = opt_ms(opts, name, dflt);
	return v >= 1 && v <= 1000000u ? v : dflt;
}

int hax_glue_init(hax_glue **out, const char *debug_options, const char *node_uuid)
{
	(void)node_uuid;
	if (out == NULL)
		return HAX_E_INVAL;
	*out = NULL;
	hax_glue *h = calloc(1, sizeof(*h));
	if (h == NULL)
		return -ENOMEM;
	h->stop_timeout_ms = DEFAULT_STOP_TIMEOUT_MS;
	h->start_timeout_ms = DEFAULT_START_TIMEOUT_MS;
	h->max_conns_opt = EMU_DEFAULT_MAX_CONNS;
	h->max_pending_opt = EMU_DEFAULT_MAX_PENDING;
	h->hello_timeout_ms = EMU_DEFAULT_HELLO_TIMEOUT_MS;
	h->frame_timeout_ms = EMU_DEFAULT_FRAME_TIMEOUT_MS;
	if (debug_options != NULL) {
		h->max_conns_opt = opt_count(debug_options, "emu-max-conns=", h->max_conns_opt);
		h->max_pending_opt =
			opt_count(debug_options, "emu-max-pending=", h->max_pending_opt);
		h->hello_timeout_ms =
			opt_ms(debug_options, "emu-hello-timeout-ms=", h->hello_timeout_ms);
		h->frame_timeout_ms =
			opt_ms(debug_options, "emu-frame-timeout-ms=", h->frame_timeout_ms);
		h->stop_timeout_ms = opt_ms(debug_options, "emu-stop-timeout-ms=", h->stop_timeout_ms);
		h->start_timeout_ms =
			opt_ms(debug_options, "emu-start-timeout-ms=", h->start_timeout_ms);
		h->ep_linger_ms = opt_ms(debug_options, "emu-ep-linger-ms=", 0);
		h->log_msg = strstr(debug_options, "log-msg") != NULL;
		h->log_link = strstr(debug_options, "log-link") != NULL;
		h->log_ep = strstr(debug_options, "log-entrypoint") != NULL;
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (pthread_mutex_init(&h->mu, NULL) != 0) {
		free(h);
		return -ENOMEM;
	}
	pthread_cond_init(&h->hcv, NULL);
	pthread_cond_init(&h->wcv, &ca);
	pthread_condattr_destroy(&ca);
	h->client = emu_client_new();
	if (h->client == NULL) {
		pthread_cond_destroy(&h->hcv);
		pthread_cond_destroy(&h->wcv);
		pthread_mutex_destroy(&h->mu);
		free(h);
		return -ENOMEM;
	}
	h->init_tid = pthread_self();
	h->state = S_INIT;
	h->next_link_id = 1;
	h->listen_fd = -1;
	h->wake_fd = -1;
	*out = h;
	return 0;
}

int hax_glue_fini(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid))
		return thread_refused(h, "fini");
	if (h->state != S_INIT) {
		emu_logf(h, HAX_LOG_WARN, "fini: stop() the interface first");
		emu_unlock(h);
		return HAX_E_STATE;
	}
	if (emu_client_busy(h->client)) {
		emu_logf(h, HAX_LOG_WARN, "fini: a client call is still in progress");
		emu_unlock(h);
		return HAX_E_STATE;
	}
	emu_unlock(h);
	emu_client_free(h->client);
	free(h->adopted);
	pthread_cond_destroy(&h->hcv);
	pthread_cond_destroy(&h->wcv);
	pthread_mutex_destroy(&h->mu);
	free(h);
	return 0;
}

int hax_glue_thread_adopt(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!thread_known(h)) {
		if (h->n_adopted == h->cap_adopted) {
			size_t cap = h->cap_adopted ? h->cap_adopted * 2 : 8;
			pthread_t *na = realloc(h->adopted, cap * sizeof(*na));
			if (na == NULL) {
				emu_unlock(h);
				return -ENOMEM;
			}
			h->adopted = na;
			h->cap_adopted = cap;
		}
		h->adopted[h->n_adopted++] = pthread_self();
	}
	emu_unlock(h);
	return 0;
}

int hax_glue_thread_shun(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	pthread_t me = pthread_self();
	for (size_t i = 0; i < h->n_adopted; i++) {
		if (pthread_equal(me, h->adopted[i])) {
			h->adopted[i] = h->adopted[--h->n_adopted];
			emu_unlock(h);
			return 0;
		}
	}
	if (!thread_known(h))
		return thread_refused(h, "thread_shun");
	emu_unlock(h); /* the init thread and our own threads stay known */
	return 0;
}

/* --- the handler thread ------------------------------------------------- */

static struct emu_req *req_find(hax_glue *h, uint64_t n)
{
	for (struct emu_req *r = h->reqs; r != NULL; r = r->next) {
		if (r->n == n)
			return r;
	}
	return NULL;
}

static void req_unlink(hax_glue *h, struct emu_req *req)
{
	for (struct emu_req **pr = &h->reqs; *pr != NULL; pr = &(*pr)->next) {
		if (*pr == req) {
			*pr = req->next;
			break;
		}
	}
	req->next = NULL;
}

/* Records a GET or FVEC_REQ passed up, so that its answer can be checked. */
static void record_request(hax_glue *h, struct emu_link *l, const uint8_t *p)
{
	uint32_t type = emu_get_u32(p + EMU_MSG_OFF_TYPE);
	const uint8_t *q = p + EMU_MSG_HDR;
	if (type == HAX_MSG_NVEC && emu_get_u64(q) == HAX_NVEC_GET) {
		uint32_t nr = emu_get_u32(q + 24);
		struct emu_get *g = malloc(sizeof(*g) + (size_t)nr * sizeof(g->fids[0]));
		if (g == NULL) {
			emu_logf(h, HAX_LOG_ERROR, "out of memory: GET not recorded");
			return;
		}
		g->id = emu_get_u64(q + 8);
		g->nr = nr;
		for (uint32_t i = 0; i < nr; i++) {
			g->fids[i].container = emu_get_u64(q + 28 + (size_t)i * EMU_NOTE_WIRE);
			g->fids[i].key = emu_get_u64(q + 36 + (size_t)i * EMU_NOTE_WIRE);
		}
		g->next = l->gets;
		l->gets = g;
	} else if (type == HAX_MSG_FVEC_REQ) {
		struct emu_fvq *f = malloc(sizeof(*f));
		if (f == NULL) {
			emu_logf(h, HAX_LOG_ERROR, "out of memory: FVEC_REQ not recorded");
			return;
		}
		f->addr = emu_get_u64(q + 16);
		f->gen = emu_get_u64(q + 24);
		f->next = l->fvqs;
		l->fvqs = f;
	}
}

/* Runs one event: called and returns with h->mu held, drops it around the
 * callback. */
static void handle(hax_glue *h, struct emu_ev *ev)
{
	const struct hax_callbacks *cb = &h->cbs;
	struct emu_link *l = ev->kind == EV_EPREQ ? NULL : link_find(h, ev->link);

	switch (ev->kind) {
	case EV_EPREQ: {
		struct emu_req *r = req_find(h, ev->a);
		if (r == NULL)
			return;
		r->up = true;
		struct hax_u128 id = {0, r->n};
		struct hax_fid fid = r->process_fid;
		uint64_t pid = r->pid;
		bool first = r->first;
		char ep[EMU_STR_MAX + 1];
		char git[EMU_STR_MAX + 1];
		/* The reply may free r while the callback still runs. */
		memcpy(ep, r->ep, sizeof(ep));
		memcpy(git, r->git, sizeof(git));
		emu_unlock(h);
		cb->entrypoint_request(cb->user, &id, ep, &fid, git, pid, first);
		break;
	}
	case EV_RECV: {
		if (l == NULL || l->disconnected || ev->a < l->in_base)
			return;
		size_t i = (size_t)(ev->a - l->in_base) / 2;
		if (i >= l->inq.len || *ring_at(&l->inq, i) != IN_PENDING)
			return;
		*ring_at(&l->inq, i) = IN_UP;
		record_request(h, l, ev->data);
		if (h->log_msg)
			emu_logf(h, HAX_LOG_DEBUG, "link %llu: received tag %llu %s",
				 (unsigned long long)l->id, (unsigned long long)ev->a,
				 emu_type_name(emu_get_u32(ev->data + EMU_MSG_OFF_TYPE)));
		emu_unlock(h);
		emu_msg_decode(ev->data, ev->len, h->scratch, &h->scratch_dirty);
		h->scratch->tag = ev->a;
		cb->msg_received(cb->user, ev->link, h->scratch);
		break;
	}
	case EV_DELIVERED:
		if (l == NULL)
			return;
		emu_unlock(h);
		for (uint64_t t = ev->a; t <= ev->b; t += 2)
			cb->msg_delivered(cb->user, ev->link, t);
		break;
	case EV_DISCONNECTING:
		if (l == NULL || l->disconnected)
			return;
		l->disc_cb = true;
		emu_unlock(h);
		cb->link_is_disconnecting(cb->user, ev->link);
		break;
	case EV_FINISH: {
		if (l == NULL)
			return;
		size_t n = l->outq.len;
		uint64_t base = l->out_base;
		emu_unlock(h);
		for (size_t i = 0; i < n; i++)
			cb->msg_not_delivered(cb->user, ev->link, base + 2 * i);
		cb->link_disconnected(cb->user, ev->link);
		pthread_mutex_lock(&h->mu);
		l = link_find(h, ev->link);
		if (l == NULL)
			return;
		if (l->conn != NULL)
			send_nolink(h, l->conn, l->id);
		emu_logf(h, HAX_LOG_INFO, "link %llu (%s) disconnected, %zu messages not delivered",
			 (unsigned long long)l->id, l->ep, n);
		link_remove(h, l);
		notify_waiters(h);
		return;
	}
	default:
		return;
	}
	pthread_mutex_lock(&h->mu);
}

static void *handler_main(void *arg)
{
	hax_glue *h = arg;
	unsigned batch = 0;

	pthread_mutex_lock(&h->mu);
	for (;;) {
		struct emu_ev *ev = h->evq_head;
		if (h->kick_deferred && (ev == NULL || ++batch >= 64)) {
			/* Frames queued by callbacks go out once per batch. */
			uint64_t one = 1;
			ssize_t r = write(h->wake_fd, &one, sizeof(one));
			(void)r;
			h->kick_deferred = false;
			batch = 0;
		}
		if (h->quit_handler)
			break;
		if (ev == NULL) {
			h->handler_sleeping = true;
			pthread_cond_wait(&h->hcv, &h->mu);
			h->handler_sleeping = false;
			continue;
		}
		h->evq_head = ev->next;
		if (h->evq_head == NULL)
			h->evq_tail = NULL;
		handle(h, ev);
		free(ev);
	}
	emu_unlock(h);
	return NULL;
}

/* --- frames from peers (network thread, h->mu held) --------------------- */

/*
 * While stop() runs, a later (not first) request from a process none of
 * whose links is live is withheld: Motr's stop() disconnects every link
 * before it stops the entrypoint service, a peer told NOLINK asks again at
 * once, and whatever rc the answer has, Motr marks it disconnected_previously
 * (the link is gone, the cookie is this run's), on which the peer asserts.
 * Unanswered, the peer keeps waiting and asks the next HA. hax's own
 * requests are never withheld.
 */
static bool stop_withholds(const hax_glue *h, const struct emu_req *req)
{
	if (h->state != S_STOPPING || req->first || fid_eq(&req->process_fid, &h->process_fid))
		return false;
	for (size_t i = 0; i < h->n_links; i++) {
		const struct emu_link *l = h->links[i];
		if (!l->self && !l->disconnected && fid_eq(&l->process_fid, &req->process_fid))
			return false;
	}
	return true;
}

static void frame_ep_req(hax_glue *h, struct emu_conn *c, const uint8_t *body, size_t len)
{
	struct emu_rd r = {body, len, NULL};
	struct emu_req *req = calloc(1, sizeof(*req));
	if (req == NULL) {
		emu_conn_doom(h, c, "out of memory for an entrypoint request");
		return;
	}
	uint8_t first = rd_u8(&r);
	req->generation = rd_u64(&r);
	rd_fid(&r, &req->process_fid);
	req->pid = rd_u64(&r);
	req->cookie_expected.hi = rd_u64(&r);
	req->cookie_expected.lo = rd_u64(&r);
	req->link_id = rd_u64(&r);
	req->next_out_tag = rd_u64(&r);
	req->next_in_tag = rd_u64(&r);
	rd_str(&r, req->ep);
	rd_str(&r, req->git);
	rd_end(&r);
	if (r.bad == NULL)
		(void)emu_ep_canonical(req->ep, sizeof(req->ep));
	if (r.bad == NULL && first > 1)
		r.bad = "first_request is neither 0 nor 1";
	if (r.bad == NULL && c->req != NULL)
		r.bad = "EP_REQ while another one is outstanding";
	if (r.bad != NULL) {
		free(req);
		emu_conn_doom(h, c, "bad EP_REQ: %s", r.bad);
		return;
	}
	if (h->closing) {
		/* stop() is past its last wait: nobody would answer. */
		free(req);
		return;
	}
	req->first = first;
	req->n = h->next_req++;
	req->conn = c;
	c->req = req;
	if (stop_withholds(h, req)) {
		req->next = h->withheld;
		h->withheld = req;
		h->n_withheld++;
		emu_logf(h, HAX_LOG_INFO, "entrypoint request {0,%llu} from %s (process " FIDF ") "
			 "withheld: hax is stopping and the process has no live link; any answer "
			 "would carry disconnected_previously and fence it",
			 (unsigned long long)req->n, req->ep, FIDP(&req->process_fid));
		return;
	}
	req->next = h->reqs;
	h->reqs = req;
	ev_simple(h, EV_EPREQ, 0, req->n, 0);
	emu_logf(h, h->log_ep ? HAX_LOG_INFO : HAX_LOG_DEBUG,
		 "entrypoint request {0,%llu} from %s (process " FIDF ", pid %llu, first %d, "
		 "link %llu) on connection %llu",
		 (unsigned long long)req->n, req->ep, FIDP(&req->process_fid),
		 (unsigned long long)req->pid, first, (unsigned long long)req->link_id,
		 (unsigned long long)c->id);
}

static void frame_msg(hax_glue *h, struct emu_conn *c, const uint8_t *body, size_t len)
{
	if (len < 16) {
		emu_conn_doom(h, c, "bad MSG: body shorter than its fields");
		return;
	}
	hax_link_id id = emu_get_u64(body);
	uint64_t tag = emu_get_u64(body + 8);
	const char *bad = emu_msg_check(body + 16, len - 16);
	if (bad != NULL) {
		emu_conn_doom(h, c, "bad MSG: %s", bad);
		return;
	}
	struct emu_link *l = link_find(h, id);
	if (l == NULL || l->self) {
		send_nolink(h, c, id);
		return;
	}
	if (tag < l->in_next) {
		/* A resend: confirm again what hax's user already delivered. */
		bool done = tag < l->in_base;
		if (!done && ((tag - l->in_base) & 1) == 0)
			done = *ring_at(&l->inq, (size_t)(tag - l->in_base) / 2) == IN_DONE;
		if (done && ((tag ^ l->in_next) & 1) == 0)
			send_delivered(h, c, id, tag);
		return;
	}
	if (tag != l->in_next || l->announced || l->disconnected) {
		if (h->log_msg)
			emu_logf(h, HAX_LOG_DEBUG, "link %llu: MSG tag %llu dropped (expected %llu%s)",
				 (unsigned long long)id, (unsigned long long)tag,
				 (unsigned long long)l->in_next,
				 l->announced ? ", link disconnecting" : "");
		return;
	}
	struct emu_ev *ev = ev_new(EV_RECV, id, len - 16);
	if (ev == NULL || ring_push(&l->inq, IN_PENDING) != 0) {
		free(ev);
		emu_conn_doom(h, c, "out of memory for a message");
		return;
	}
	ev->a = tag;
	memcpy(ev->data, body + 16, len - 16);
	l->in_next += 2;
	ev_push(h, ev);
}

static void frame_delivered(hax_glue *h, struct emu_conn *c, const uint8_t *body, size_t len)
{
	if (len != 16) {
		emu_conn_doom(h, c, "bad DELIVERED: body of %zu bytes, not 16", len);
		return;
	}
	hax_link_id id = emu_get_u64(body);
	uint64_t tag = emu_get_u64(body + 8);
	struct emu_link *l = link_find(h, id);
	if (l == NULL || l->self) {
		send_nolink(h, c, id);
		return;
	}
	if (l->disconnected || tag < l->out_base || tag >= l->out_next ||
	    ((tag - l->out_base) & 1) != 0)
		return; /* a repeat, or too late: the link is stopping */
	((struct emu_out *)*ring_at(&l->outq, (size_t)(tag - l->out_base) / 2))->confirmed = true;
	uint64_t first = l->out_base;
	while (l->outq.len > 0 && ((struct emu_out *)*ring_at(&l->outq, 0))->confirmed) {
		free((void *)ring_pop(&l->outq));
		l->out_base += 2;
	}
	if (l->out_base != first)
		ev_simple(h, EV_DELIVERED, id, first, l->out_base - 2);
}

void emu_on_frame(hax_glue *h, struct emu_conn *c, uint8_t type, const uint8_t *body, size_t len)
{
	if (type == F_HELLO) {
		if (c->hello) {
			emu_conn_doom(h, c, "second HELLO");
			return;
		}
		if (len != 8) {
			emu_conn_doom(h, c, "bad HELLO: body of %zu bytes, not 8", len);
			return;
		}
		if (emu_get_u32(body) != EMU_MAGIC || emu_get_u32(body + 4) != EMU_VERSION) {
			emu_conn_doom(h, c, "bad HELLO: magic %#x version %u", emu_get_u32(body),
				      emu_get_u32(body + 4));
			return;
		}
		emu_conn_hello(h, c);
		uint8_t *p = emu_conn_frame(h, c, F_HELLO_R, 8);
		if (p != NULL) {
			emu_put_u32(p, EMU_MAGIC);
			emu_put_u32(p + 4, EMU_VERSION);
		}
		return;
	}
	if (!c->hello) {
		emu_conn_doom(h, c, "frame type %#x before HELLO", type);
		return;
	}
	switch (type) {
	case F_EP_REQ:
		frame_ep_req(h, c, body, len);
		break;
	case F_MSG:
		frame_msg(h, c, body, len);
		break;
	case F_DELIVERED:
		frame_delivered(h, c, body, len);
		break;
	case F_CTL:
		emu_client_on_ctl(h, c, body, len);
		break;
	default:
		emu_conn_doom(h, c, "unknown frame type %#x", type);
		break;
	}
}

void emu_on_conn_close(hax_glue *h, struct emu_conn *c)
{
	for (size_t i = 0; i < h->n_links; i++) {
		struct emu_link *l = h->links[i];
		if (l->conn == c) {
			l->conn = NULL;
			emu_logf(h, HAX_LOG_INFO, "link %llu (%s): peer connection %llu lost, %zu "
				 "messages kept for its return",
				 (unsigned long long)l->id, l->ep, (unsigned long long)c->id,
				 l->outq.len);
		}
	}
	if (c->req != NULL) {
		c->req->conn = NULL;
		c->req = NULL;
	}
}

/* --- API: entrypoint ---------------------------------------------------- */

static bool u128_eq(const struct hax_u128 *a, const struct hax_u128 *b)
{
	return a->hi == b->hi && a->lo == b->lo;
}

static size_t ep_rep_size(uint32_t confd_nr, const char *const *eps, const char *rm_ep)
{
	size_t n = 4 + 1 + 16 + 16 + 8 + 8 + 8 + 4 + 16 + 2 + strlen(rm_ep) + 4;
	for (uint32_t i = 0; i < confd_nr; i++)
		n += 16 + 2 + strlen(eps[i]);
	return n;
}

static bool str_ok(const char *s)
{
	size_t n = strlen(s);
	return n <= EMU_STR_MAX && emu_utf8_ok((const uint8_t *)s, n);
}

int hax_glue_entrypoint_reply(hax_glue *h, const struct hax_u128 *req_id, int32_t rc,
			      uint32_t confd_nr, const struct hax_fid *confd_fids,
			      const char *const *confd_eps, uint32_t quorum,
			      const struct hax_fid *rm_fid, const char *rm_ep)
{
	static const struct hax_fid zero = {0, 0};
	struct vio v = {0};
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "entrypoint_reply");
	if (e != 0)
		return e;
	if (req_id == NULL || (confd_nr > 0 && (confd_fids == NULL || confd_eps == NULL))) {
		emu_logf(h, HAX_LOG_WARN, "entrypoint_reply: NULL argument");
		return leave(h, &v, HAX_E_INVAL);
	}
	if (rm_ep == NULL)
		rm_ep = "";
	if (rm_fid == NULL)
		rm_fid = &zero;
	if (confd_nr > EMU_CONFD_MAX) {
		emu_logf(h, HAX_LOG_WARN, "entrypoint_reply: %u confds, more than %u", confd_nr,
			 EMU_CONFD_MAX);
		return leave(h, &v, HAX_E_LIMIT);
	}
	for (uint32_t i = 0; i < confd_nr; i++) {
		if (confd_eps[i] == NULL || !str_ok(confd_eps[i])) {
			emu_logf(h, HAX_LOG_WARN, "entrypoint_reply: confd endpoint %u is NULL, "
				 "longer than 255 bytes or not UTF-8", i);
			return leave(h, &v, HAX_E_INVAL);
		}
	}
	if (!str_ok(rm_ep)) {
		emu_logf(h, HAX_LOG_WARN, "entrypoint_reply: rm_ep longer than 255 bytes or not UTF-8");
		return leave(h, &v, HAX_E_INVAL);
	}
	struct emu_req *req = req_id->hi == 0 ? req_find(h, req_id->lo) : NULL;
	if (req == NULL || !req->up)
		return leave(h, &v, violate(h, &v, HAX_E_NOREQ,
					    "entrypoint_reply: request {%llu,%llu} is unknown or "
					    "already answered",
					    (unsigned long long)req_id->hi,
					    (unsigned long long)req_id->lo));
	req_unlink(h, req);

	/* Motr's ha_link_handle(): which link, and which callback. */
	enum { CONNECTED, REUSED, ABSENT } what;
	uint8_t flags = 0;
	struct emu_link *l = NULL;
	struct emu_link *found = req->first ? NULL : link_find(h, req->link_id);
	/* A link id names a link of the run whose cookie the requester holds
	 * (Motr's link ids are unique uuids; the emulator's restart at 1). */
	if (found != NULL && (found->disconnected || found->self != req->self ||
			      !u128_eq(&req->cookie_expected, &h->cookie)))
		found = NULL;
	if (req->first) {
		l = link_new(h, req, 1, 2);
		what = CONNECTED;
	} else if (found != NULL) {
		l = found;
		what = REUSED;
		if (l->conn != NULL && l->conn != req->conn)
			emu_logf(h, HAX_LOG_INFO, "link %llu: peer moves from connection %llu",
				 (unsigned long long)l->id, (unsigned long long)l->conn->id);
		l->conn = NULL;
	} else if (u128_eq(&req->cookie_expected, &h->cookie)) {
		what = ABSENT;
		flags |= 2; /* disconnected_previously */
	} else {
		l = link_new(h, req, req->next_in_tag ? req->next_in_tag : 1,
			     req->next_out_tag ? req->next_out_tag : 2);
		what = CONNECTED;
		flags |= 1; /* do_reconnect */
	}
	if (what == CONNECTED && l != NULL)
		l->connecting = true;
	if (what != ABSENT && l == NULL) {
		/* Out of memory: the request stays answerable. */
		req->next = h->reqs;
		h->reqs = req;
		emu_logf(h, HAX_LOG_ERROR, "entrypoint_reply: out of memory");
		return leave(h, &v, -ENOMEM);
	}
	hax_link_id lid = l != NULL ? l->id : 0;
	uint64_t rep_out = l != NULL ? l->in_next : 0;
	uint64_t rep_in = l != NULL ? l->out_next : 0;
	if (what == CONNECTED) {
		rep_in = l->out_base;
		emu_logf(h, HAX_LOG_INFO, "link %llu connected%s: %s, process " FIDF
			 ", request {0,%llu}, rc %d",
			 (unsigned long long)lid, (flags & 1) ? " (hax restarted, tags continue)" : "",
			 req->ep, FIDP(&req->process_fid), (unsigned long long)req->n, rc);
	} else if (what == REUSED) {
		emu_logf(h, HAX_LOG_INFO, "link %llu reused: %s, request {0,%llu}, rc %d",
			 (unsigned long long)lid, req->ep, (unsigned long long)req->n, rc);
	} else {
		emu_logf(h, HAX_LOG_INFO, "link absent: %s (process " FIDF ") was disconnected "
			 "before, request {0,%llu}",
			 req->ep, FIDP(&req->process_fid), (unsigned long long)req->n);
	}
	const struct hax_callbacks *cb = &h->cbs;
	struct hax_u128 id = {0, req->n};
	uint64_t run = h->runs;
	h->replying++;
	emu_unlock(h);

	/* Motr runs the link callback on the replying thread, before the reply
	 * is posted; no frame for this link goes out before EP_REP. */
	if (what == CONNECTED)
		cb->link_connected(cb->user, &id, lid, req->ep, &req->process_fid);
	else if (what == REUSED)
		cb->link_reused(cb->user, &id, lid);
	else
		cb->link_absent(cb->user, &id);

	pthread_mutex_lock(&h->mu);
	if (h->state == S_INIT || h->runs != run) {
		/* start() gave up on this run while the callback ran. */
		free(req);
		return leave(h, &v, 0);
	}
	h->replying--;
	struct emu_conn *c = req->conn;
	if (c != NULL) {
		c->req = NULL;
		uint8_t *p = emu_conn_frame(h, c, F_EP_REP, ep_rep_size(confd_nr, confd_eps, rm_ep));
		if (p != NULL) {
			struct emu_wr w = {p};
			wr_u32(&w, rc == 0 ? 0 : 2);
			wr_u8(&w, flags);
			wr_u64(&w, id.hi);
			wr_u64(&w, id.lo);
			wr_u64(&w, h->cookie.hi);
			wr_u64(&w, h->cookie.lo);
			wr_u64(&w, lid);
			wr_u64(&w, rep_out);
			wr_u64(&w, rep_in);
			wr_u32(&w, quorum);
			wr_fid(&w, rm_fid);
			wr_str(&w, rm_ep);
			wr_u32(&w, confd_nr);
			for (uint32_t i = 0; i < confd_nr; i++) {
				wr_fid(&w, &confd_fids[i]);
				wr_str(&w, confd_eps[i]);
			}
		}
		l = lid != 0 ? link_find(h, lid) : NULL;
		if (l != NULL && !l->disconnected && l->conn == NULL && !c->doomed)
			link_attach(h, l, c);
	}
	l = lid != 0 ? link_find(h, lid) : NULL;
	if (l != NULL && l->connecting) {
		l->connecting = false;
		if (l->deferred_why != NULL)
			announce(h, l, l->deferred_why);
	}
	if (req->self) {
		if (rc == 0) {
			h->self_consumed = true;
			notify_waiters(h);
		} else {
			/* Motr's client asks again at once, no longer first. */
			struct emu_req *again = calloc(1, sizeof(*again));
			if (again != NULL) {
				*again = *req;
				again->next = h->reqs;
				again->up = false;
				again->first = false;
				again->n = h->next_req++;
				again->generation = ++h->generation;
				again->cookie_expected = h->cookie;
				again->link_id = lid;
				again->next_out_tag = rep_in;
				again->next_in_tag = rep_out;
				h->reqs = again;
				ev_simple(h, EV_EPREQ, 0, again->n, 0);
			} else {
				emu_logf(h, HAX_LOG_ERROR, "out of memory: own entrypoint request lost");
			}
		}
	}
	notify_waiters(h);
	free(req);
	return leave(h, &v, 0);
}

/* --- API: messages ------------------------------------------------------ */

int hax_glue_send(hax_glue *h, hax_link_id link, const struct hax_msg *msg, uint64_t *tag_out)
{
	struct vio v = {0};
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "send");
	if (e != 0)
		return e;
	if (msg == NULL || tag_out == NULL) {
		emu_logf(h, HAX_LOG_WARN, "send: NULL argument");
		return leave(h, &v, HAX_E_INVAL);
	}
	e = check_msg(h, &v, msg);
	if (e == HAX_E_INVAL)
		emu_logf(h, HAX_LOG_WARN, "send: message type %u is not valid", msg->type);
	if (e != 0)
		return leave(h, &v, e);
	struct emu_link *l = link_find(h, link);
	if (l == NULL || l->disconnected)
		return leave(h, &v, violate(h, &v, HAX_E_NOLINK, "send: link %llu %s",
					    (unsigned long long)link,
					    l != NULL || link_was(h, link) ? "is disconnected"
									   : "is unknown"));
	struct emu_get **pg = NULL;
	struct emu_fvq **pf = NULL;
	if (msg->type == HAX_MSG_NVEC && msg->u.nvec.dir == HAX_NVEC_SET &&
	    msg->u.nvec.id_of_get != 0) {
		pg = find_get(l, msg);
		if (pg == NULL)
			return leave(h, &v, violate(h, &v, HAX_E_NVEC,
						    "send: NVEC SET with id_of_get %llu on link %llu "
						    "answers no outstanding GET received on that link "
						    "with the same %u fids in the same order",
						    (unsigned long long)msg->u.nvec.id_of_get,
						    (unsigned long long)link, msg->nr_notes));
	}
	if (msg->type == HAX_MSG_FVEC_REP) {
		pf = find_fvq(l, msg);
		if (pf == NULL)
			return leave(h, &v, violate(h, &v, HAX_E_COOKIE,
						    "send: FVEC_REP cookie {%#llx,%#llx} on link %llu "
						    "matches no outstanding FVEC_REQ on that link",
						    (unsigned long long)msg->u.fvec.cookie_addr,
						    (unsigned long long)msg->u.fvec.cookie_gen,
						    (unsigned long long)link));
	}
	if (l->self && msg->type == HAX_MSG_NVEC && msg->u.nvec.dir == HAX_NVEC_SET &&
	    h->fid_n + msg->nr_notes > EMU_FIDTAB_MAX) {
		size_t add = fid_new_count(h, msg);
		if (h->fid_n + add > EMU_FIDTAB_MAX)
			return leave(h, &v, violate(h, &v, HAX_E_LIMIT,
						    "send: NVEC SET on the self link brings the "
						    "process fid table to %zu entries, more than %u",
						    h->fid_n + add, EMU_FIDTAB_MAX));
	}
	struct emu_out *o = NULL;
	if (!l->self) {
		size_t len = emu_msg_size(msg);
		o = malloc(sizeof(*o) + len);
		if (o == NULL || ring_push(&l->outq, (uintptr_t)o) != 0) {
			free(o);
			emu_logf(h, HAX_LOG_ERROR, "send: out of memory");
			return leave(h, &v, -ENOMEM);
		}
		o->len = (uint32_t)len;
		o->confirmed = false;
		emu_msg_encode(msg, o->data);
	}
	uint64_t tag = l->out_next;
	l->out_next += 2;
	*tag_out = tag;
	if (pg != NULL) {
		struct emu_get *g = *pg;
		*pg = g->next;
		free(g);
	}
	if (pf != NULL) {
		struct emu_fvq *f = *pf;
		*pf = f->next;
		free(f);
	}
	if (h->log_msg)
		emu_logf(h, HAX_LOG_DEBUG, "link %llu: sent tag %llu %s", (unsigned long long)link,
			 (unsigned long long)tag, emu_type_name(msg->type));
	if (l->self) {
		self_model(h, l, msg, tag);
	} else if (l->conn != NULL && l->tx_next == tag) {
		/* In step with the peer: straight out, unless it stopped reading
		 * (emu_conn_frame drops the connection at the bound). */
		send_msg_frame(h, l->conn, l->id, tag, o);
		l->tx_next = tag + 2;
	} else if (l->conn != NULL) {
		l->conn->starved = true; /* behind a backlog: keeps tag order */
		emu_kick_net(h);
	}
	return leave(h, &v, 0);
}

int hax_glue_delivered(hax_glue *h, hax_link_id link, uint64_t tag)
{
	struct vio v = {0};
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "delivered");
	if (e != 0)
		return e;
	struct emu_link *l = link_find(h, link);
	if (l == NULL)
		return leave(h, &v, violate(h, &v, HAX_E_NOLINK, "delivered: link %llu %s",
					    (unsigned long long)link,
					    link_was(h, link) ? "is disconnected" : "is unknown"));
	const char *why = NULL;
	if (tag < l->in_base) {
		why = ((tag ^ l->in_base) & 1) ? "has the parity of sent tags" : "was delivered already";
	} else if (tag >= l->in_next) {
		why = ((tag ^ l->in_base) & 1) ? "has the parity of sent tags" : "was never received";
	} else if ((tag - l->in_base) & 1) {
		why = "has the parity of sent tags";
	} else {
		uintptr_t *st = ring_at(&l->inq, (size_t)(tag - l->in_base) / 2);
		if (*st == IN_DONE)
			why = "was delivered already";
		else if (*st == IN_PENDING)
			why = "has not reached msg_received yet";
		else
			*st = IN_DONE;
	}
	if (why != NULL)
		return leave(h, &v, violate(h, &v, HAX_E_NOTAG, "delivered: tag %llu on link %llu %s",
					    (unsigned long long)tag, (unsigned long long)link, why));
	while (l->inq.len > 0 && *ring_at(&l->inq, 0) == IN_DONE) {
		ring_pop(&l->inq);
		l->in_base += 2;
	}
	if (l->conn != NULL)
		send_delivered(h, l->conn, l->id, tag);
	if (l->self)
		notify_waiters(h);
	return leave(h, &v, 0);
}

int hax_glue_disconnect(hax_glue *h, hax_link_id link)
{
	struct vio v = {0};
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "disconnect");
	if (e != 0)
		return e;
	struct emu_link *l = link_find(h, link);
	if (l == NULL) {
		if (link_was(h, link))
			return leave(h, &v, violate(h, &v, HAX_E_ORDER,
						    "disconnect: link %llu is already disconnected",
						    (unsigned long long)link));
		return leave(h, &v, violate(h, &v, HAX_E_NOLINK, "disconnect: link %llu is unknown",
					    (unsigned long long)link));
	}
	if (l->disconnected)
		return leave(h, &v, violate(h, &v, HAX_E_ORDER,
					    "disconnect: link %llu disconnected twice",
					    (unsigned long long)link));
	if (!l->disc_cb)
		return leave(h, &v, violate(h, &v, HAX_E_ORDER,
					    "disconnect: link %llu without a prior "
					    "link_is_disconnecting",
					    (unsigned long long)link));
	if (l->in_next != l->in_base)
		return leave(h, &v, violate(h, &v, HAX_E_UNDELIVERED,
					    "disconnect: link %llu has %llu received messages not "
					    "delivered (oldest tag %llu)",
					    (unsigned long long)link,
					    (unsigned long long)(l->in_next - l->in_base) / 2,
					    (unsigned long long)l->in_base));
	if (!ev_simple(h, EV_FINISH, l->id, 0, 0)) {
		emu_logf(h, HAX_LOG_ERROR, "disconnect: out of memory");
		return leave(h, &v, -ENOMEM);
	}
	l->disconnected = true;
	emu_logf(h, HAX_LOG_INFO, "link %llu (%s): disconnect, %zu sends unconfirmed",
		 (unsigned long long)l->id, l->ep, l->outq.len);
	return leave(h, &v, 0);
}

int hax_glue_link_endpoint(hax_glue *h, hax_link_id link, char *buf, size_t len)
{
	struct vio v = {0};
	if (h == NULL)
		return HAX_E_INVAL;
	int e = enter(h, "link_endpoint");
	if (e != 0)
		return e;
	if (buf == NULL)
		return leave(h, &v, HAX_E_INVAL);
	struct emu_link *l = link_find(h, link);
	if (l == NULL)
		return leave(h, &v, HAX_E_NOLINK);
	size_t n = strlen(l->ep);
	if (n + 1 > len)
		return leave(h, &v, HAX_E_LIMIT);
	memcpy(buf, l->ep, n + 1);
	return leave(h, &v, 0);
}

/* --- start and stop ----------------------------------------------------- */

/* Frees everything of a run once its threads are gone. */
static void run_free(hax_glue *h)
{
	for (struct emu_ev *ev = h->evq_head, *n; ev != NULL; ev = n) {
		n = ev->next;
		free(ev);
	}
	h->evq_head = h->evq_tail = NULL;
	for (size_t i = 0; i < h->n_links; i++)
		link_free(h->links[i]);
	free(h->links);
	h->links = NULL;
	h->n_links = h->cap_links = 0;
	h->self = NULL;
	for (struct emu_req *r = h->reqs, *n; r != NULL; r = n) {
		n = r->next;
		if (r->conn != NULL)
			r->conn->req = NULL;
		free(r);
	}
	h->reqs = NULL;
	for (struct emu_req *r = h->withheld, *n; r != NULL; r = n) {
		n = r->next;
		if (r->conn != NULL)
			r->conn->req = NULL;
		free(r);
	}
	h->withheld = NULL;
	h->n_withheld = 0;
	emu_net_free_all(h);
	if (h->listen_fd >= 0) {
		close(h->listen_fd);
		if (h->ep.family == AF_UNIX)
			(void)unlink(h->ep.path);
	}
	h->listen_fd = -1;
	if (h->wake_fd >= 0)
		close(h->wake_fd);
	h->wake_fd = -1;
	free(h->fidtab);
	h->fidtab = NULL;
	h->fid_n = 0;
	free(h->scratch);
	h->scratch = NULL;
	h->scratch_dirty = 0;
}

/* Stops both threads; called and returns with h->mu held. */
static void threads_stop(hax_glue *h)
{
	if (!h->threads_up)
		return;
	h->quit_handler = true;
	pthread_cond_signal(&h->hcv);
	emu_unlock(h);
	pthread_join(h->handler_tid, NULL);
	pthread_mutex_lock(&h->mu);
	h->quit_net = true;
	uint64_t one = 1;
	ssize_t r = write(h->wake_fd, &one, sizeof(one));
	(void)r;
	emu_unlock(h);
	pthread_join(h->net_tid, NULL);
	pthread_mutex_lock(&h->mu);
	h->threads_up = false;
}

static struct hax_u128 new_cookie(hax_glue *h)
{
	struct hax_u128 c;
	c.hi = (uint64_t)getpid() << 32 | (h->runs & 0xffffffffu);
	c.lo = now_ns() ^ ((uint64_t)(uintptr_t)h * 0x9e3779b97f4a7c15ull);
	if (c.lo == 0)
		c.lo = 1;
	return c;
}

/* No receive pool here: the contract (bounds, thread, state) as on Motr. */
int hax_glue_set_receive_buffers(hax_glue *h, uint32_t n)
{
	if (h == NULL || n > HAX_RECEIVE_BUFFERS_MAX)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid))
		return thread_refused(h, "set_receive_buffers");
	int rc = h->state == S_INIT ? 0 : HAX_E_STATE;
	emu_unlock(h);
	return rc;
}

int hax_glue_start(hax_glue *h, const char *local_ep, const struct hax_fid *process_fid,
		   const struct hax_fid *ha_service_fid, const struct hax_fid *rm_service_fid,
		   const struct hax_callbacks *cbs)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid))
		return thread_refused(h, "start");
	if (h->state != S_INIT) {
		emu_logf(h, HAX_LOG_WARN, "start: already started");
		emu_unlock(h);
		return HAX_E_STATE;
	}
	emu_unlock(h);
	/* Only this thread changes the state, so the run can be set up unlocked. */
	if (local_ep == NULL || process_fid == NULL || ha_service_fid == NULL ||
	    rm_service_fid == NULL || cbs == NULL || cbs->entrypoint_request == NULL ||
	    cbs->msg_received == NULL || cbs->msg_delivered == NULL ||
	    cbs->msg_not_delivered == NULL || cbs->link_connected == NULL ||
	    cbs->link_reused == NULL || cbs->link_absent == NULL ||
	    cbs->link_is_disconnecting == NULL || cbs->link_disconnected == NULL)
		return HAX_E_INVAL;
	struct emu_ep ep;
	if (emu_ep_parse(local_ep, &ep) != 0)
		return HAX_E_INVAL;
	int lfd;
	int rc = emu_listen(&ep, &lfd);
	if (rc != 0)
		return rc;
	int wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct hax_msg *scratch = calloc(1, sizeof(*scratch));
	struct emu_fidslot *fidtab = calloc(FIDTAB_SLOTS, sizeof(*fidtab));
	struct emu_req *self = calloc(1, sizeof(*self));
	if (wfd < 0 || scratch == NULL || fidtab == NULL || self == NULL) {
		rc = wfd < 0 ? -errno : -ENOMEM;
		if (wfd >= 0)
			close(wfd);
		close(lfd);
		if (ep.family == AF_UNIX)
			(void)unlink(ep.path);
		free(scratch);
		free(fidtab);
		free(self);
		return rc;
	}

	pthread_mutex_lock(&h->mu);
	h->cbs = *cbs;
	snprintf(h->local_ep, sizeof(h->local_ep), "%s", local_ep);
	h->process_fid = *process_fid;
	h->ha_fid = *ha_service_fid;
	h->rm_fid = *rm_service_fid;
	h->runs++;
	h->cookie = new_cookie(h);
	h->next_req = 1;
	h->generation = 0;
	h->ka_counter = 0;
	h->listen_fd = lfd;
	h->wake_fd = wfd;
	h->ep = ep;
	h->scratch = scratch;
	h->scratch_dirty = 0;
	h->fidtab = fidtab;
	h->fid_n = 0;
	h->self_consumed = false;
	h->closing = false;
	h->quit_handler = h->quit_net = false;
	h->net_kicked = h->kick_deferred = false;
	emu_conn_limits(h);
	h->state = S_STARTING;
	/* The new threads block on h->mu until the ids below are stored. */
	rc = pthread_create(&h->handler_tid, NULL, handler_main, h);
	if (rc == 0) {
		rc = pthread_create(&h->net_tid, NULL, emu_net_main, h);
		if (rc != 0) {
			h->quit_handler = true;
			emu_unlock(h);
			pthread_join(h->handler_tid, NULL);
			pthread_mutex_lock(&h->mu);
		}
	}
	if (rc != 0) {
		free(self);
		run_free(h);
		h->state = S_INIT;
		emu_unlock(h);
		return -rc;
	}
	h->threads_up = true;
	emu_logf(h, HAX_LOG_INFO, "emulator started on %s, process " FIDF, h->local_ep,
		 FIDP(process_fid));

	/* Motr's m0_ha_connect(): an entrypoint request to ourselves. */
	self->n = h->next_req++;
	self->self = true;
	self->first = true;
	self->generation = ++h->generation;
	self->process_fid = *process_fid;
	self->pid = (uint64_t)getpid();
	snprintf(self->ep, sizeof(self->ep), "%s", local_ep);
	snprintf(self->git, sizeof(self->git), "%s", GIT_REV_ID);
	self->next = h->reqs;
	h->reqs = self;
	ev_simple(h, EV_EPREQ, 0, self->n, 0);

	/* Real Motr blocks forever here; a test had better fail. */
	struct timespec dl = deadline_after(h->start_timeout_ms);
	while (!h->self_consumed && wait_until(h, &dl))
		;
	if (!h->self_consumed) {
		struct vio v = {0};
		violate(h, &v, HAX_E_HANG,
			"start: the own entrypoint request was not answered with rc 0 within %u ms "
			"(real Motr would block forever)",
			h->start_timeout_ms);
		emu_unlock(h);
		vio_report(&v);
		pthread_mutex_lock(&h->mu);
		threads_stop(h);
		run_free(h);
		h->state = S_INIT;
		emu_unlock(h);
		return HAX_E_HANG;
	}
	/* Real Motr's order: the HA service, then the RM service it sets up. */
	self_event(h, NULL, 0, EV_STARTING);
	self_event(h, &h->ha_fid, SERVICE_HA, EV_STARTING);
	self_event(h, &h->ha_fid, SERVICE_HA, EV_STARTED);
	self_event(h, &h->rm_fid, SERVICE_RMS, EV_STARTING);
	self_event(h, &h->rm_fid, SERVICE_RMS, EV_STARTED);
	self_event(h, NULL, 0, EV_STARTED);
	emu_client_run(h->client);
	h->state = S_WORKING;
	emu_unlock(h);
	return 0;
}

/* Reports a hang found by stop() without the lock, then takes it back. */
__attribute__((format(printf, 2, 3))) static void stop_hang(hax_glue *h, const char *fmt, ...)
{
	struct vio v = {0};
	char detail[sizeof(v.detail)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	violate(h, &v, HAX_E_HANG, "%s", detail);
	emu_unlock(h);
	vio_report(&v);
	pthread_mutex_lock(&h->mu);
}

static bool self_undelivered(const hax_glue *h)
{
	return h->self != NULL && !h->self->disconnected && h->self->in_next != h->self->in_base;
}

int hax_glue_stop(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	pthread_mutex_lock(&h->mu);
	if (!pthread_equal(pthread_self(), h->init_tid))
		return thread_refused(h, "stop");
	if (h->state != S_WORKING) {
		emu_logf(h, HAX_LOG_WARN, "stop: not started");
		emu_unlock(h);
		return HAX_E_STATE;
	}
	h->state = S_STOPPING;
	emu_client_stop(h->client);
	bool hang = false;
	uint32_t ms = h->stop_timeout_ms;
	emu_logf(h, HAX_LOG_INFO, "stopping: %zu links", h->n_links);

	/* 1. The stop events on the self link, then m0_ha_flush(). */
	self_event(h, NULL, 0, EV_STOPPING);
	self_event(h, &h->rm_fid, SERVICE_RMS, EV_STOPPING);
	self_event(h, &h->rm_fid, SERVICE_RMS, EV_STOPPED);
	self_event(h, &h->ha_fid, SERVICE_HA, EV_STOPPING);
	self_event(h, &h->ha_fid, SERVICE_HA, EV_STOPPED);
	self_event(h, NULL, 0, EV_STOPPED);
	struct timespec dl = deadline_after(ms);
	while (self_undelivered(h) && wait_until(h, &dl))
		;
	if (self_undelivered(h)) {
		struct emu_link *s = h->self;
		hang = true;
		stop_hang(h, "stop: %llu messages received on the self link (tags %llu..%llu) were "
			  "not delivered within %u ms; real Motr hangs in m0_ha_flush()",
			  (unsigned long long)(s->in_next - s->in_base) / 2,
			  (unsigned long long)s->in_base, (unsigned long long)s->in_next - 2, ms);
		if (h->self != NULL) {
			h->self->inq.len = 0;
			h->self->in_base = h->self->in_next;
		}
	}

	/* 2. The handshake on every link, and every entrypoint request answered.
	 * Motr stops its entrypoint service only after the last link: requests
	 * keep coming until then (emu-ep-linger-ms stretches that moment). */
	dl = deadline_after(ms);
	bool lingering = false;
	struct timespec linger_dl = {0, 0};
	for (;;) {
		for (size_t i = 0; i < h->n_links; i++)
			announce(h, h->links[i], "stop()");
		if (h->n_links == 0 && h->reqs == NULL && h->replying == 0) {
			if (h->ep_linger_ms == 0)
				break;
			if (!lingering) {
				lingering = true;
				linger_dl = deadline_after(h->ep_linger_ms);
			}
			if (!wait_until(h, &linger_dl))
				break;
			continue;
		}
		if (!wait_until(h, &dl))
			break;
	}
	if (h->n_links > 0 || h->reqs != NULL || h->replying > 0) {
		hang = true;
		for (size_t i = 0; i < h->n_links; i++) {
			struct emu_link *l = h->links[i];
			if (l->disconnected)
				continue;
			hax_link_id id = l->id;
			if (!l->disc_cb)
				stop_hang(h, "stop: link_is_disconnecting for link %llu (%s) did not "
					  "run within %u ms",
					  (unsigned long long)id, l->ep, ms);
			else if (l->in_next != l->in_base)
				stop_hang(h, "stop: link %llu (%s) was not disconnected within %u ms: "
					  "%llu received messages not delivered",
					  (unsigned long long)id, l->ep, ms,
					  (unsigned long long)(l->in_next - l->in_base) / 2);
			else
				stop_hang(h, "stop: link %llu (%s) was not disconnected within %u ms "
					  "after link_is_disconnecting",
					  (unsigned long long)id, l->ep, ms);
			/* The table may have changed while the report ran. */
			l = link_find(h, id);
			if (l == NULL || l->disconnected) {
				i = (size_t)-1;
				continue;
			}
			l->inq.len = 0;
			l->in_base = l->in_next;
			l->disc_cb = true;
			l->connecting = false;
			l->disconnected = true;
			ev_simple(h, EV_FINISH, l->id, 0, 0);
			i = (size_t)-1; /* rescan from the start */
		}
		while (h->reqs != NULL) {
			struct emu_req *r = h->reqs;
			h->reqs = r->next;
			if (r->conn != NULL)
				r->conn->req = NULL;
			char ep[EMU_STR_MAX + 1];
			memcpy(ep, r->ep, sizeof(ep));
			unsigned long long n = (unsigned long long)r->n;
			free(r);
			stop_hang(h, "stop: entrypoint request {0,%llu} from %s was not answered "
				  "within %u ms",
				  n, ep, ms);
		}
		h->closing = true;
		dl = deadline_after(ms);
		while (h->n_links > 0 && wait_until(h, &dl))
			;
		if (h->n_links > 0)
			stop_hang(h, "stop: %zu links still not finished after %u more ms; the "
				  "handler thread is blocked in a callback",
				  h->n_links, ms);
	}
	h->closing = true;

	/* 3. Close everything. Withheld requests: Motr's stop() waits for them
	 * for ever, so the stop is cut short; the handle stays stopping (no
	 * start, no fini) and the process is to exit. The emulator closes its
	 * connections now; real Motr's stay open until the process exits. */
	size_t withheld = h->n_withheld;
	threads_stop(h);
	if (withheld > 0)
		emu_logf(h, HAX_LOG_WARN, "stop cut short: %zu entrypoint requests withheld; Motr's "
			 "stop() waits for them and cannot finish: the process is to exit", withheld);
	else
		emu_logf(h, HAX_LOG_INFO, "emulator stopped%s", hang ? " after forcing a hang" : "");
	run_free(h);
	if (withheld == 0)
		h->state = S_INIT;
	emu_unlock(h);
	if (withheld > 0)
		return HAX_E_WITHHELD;
	return hang ? HAX_E_HANG : 0;
}
