/*
 * emu_client.c - the emulator's model of Motr's client side (spiel): rconfc,
 * pools with their ioservices and pool versions, SNS repair and rebalance per
 * pool, filesystem stats and per-ioservice byte counts, and the control
 * frames peers use to shape that model (docs/emulator-protocol.md).
 *
 * The model has its own lock, c->mu, taken after h->mu and never the other
 * way round: client calls check the thread and lifecycle under h->mu, drop
 * it, then work under c->mu, so a slow client call never holds up the
 * handler or network thread. Repair and rebalance progress is computed from
 * the monotonic clock when the model is looked at; no thread drives it.
 */
#include "emu.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_RATE 10u   /* percent per second */
#define PROGRESS_DONE 100000u /* progress is kept in thousandths of a percent */

struct emu_pver {
	struct hax_fid fid;
	uint32_t state;
	uint32_t n, k, p;
	uint64_t unit_size;
};

/* One copy machine (repair or rebalance) of a pool. */
struct emu_cm {
	uint32_t state;    /* enum hax_cm_status */
	uint64_t progress; /* thousandths of a percent, as of `at_ms` */
	uint64_t at_ms;
};

struct emu_pool {
	struct hax_fid fid;
	uint32_t n_ios;
	struct hax_fid *ios;
	uint32_t n_pvers;
	struct emu_pver *pvers;
	struct emu_cm cm[2]; /* enum hax_sns_kind */
};

struct emu_counts {
	struct hax_fid ios;
	uint32_t n;
	struct hax_pver_count *v;
};

struct emu_fault {
	uint32_t count; /* calls still affected */
	int32_t rc;     /* 0: delay only */
	uint32_t delay_ms;
};

struct emu_client {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* delayed calls wait here; stop wakes them */
	bool rconfc;
	bool shutdown; /* stop() began; cleared by start() */
	struct hax_fid profile;
	uint32_t rate;
	uint32_t in_calls;
	uint32_t delayed; /* calls waiting in an injected delay now */
	struct emu_pool *pools;
	size_t n_pools;
	struct emu_counts *counts;
	size_t n_counts;
	struct hax_fs_stats fs;
	struct emu_fault faults[EMU_OP_NR];
};

static bool fid_eq(const struct hax_fid *a, const struct hax_fid *b)
{
	return a->container == b->container && a->key == b->key;
}

static bool fid_zero(const struct hax_fid *f)
{
	return f->container == 0 && f->key == 0;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* --- the model ---------------------------------------------------------- */

struct emu_client *emu_client_new(void)
{
	struct emu_client *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		pthread_condattr_destroy(&ca);
		free(c);
		return NULL;
	}
	pthread_cond_init(&c->cv, &ca);
	pthread_condattr_destroy(&ca);
	c->rate = DEFAULT_RATE;
	return c;
}

static void pool_free(struct emu_pool *p)
{
	free(p->ios);
	free(p->pvers);
}

static void model_clear(struct emu_client *c)
{
	for (size_t i = 0; i < c->n_pools; i++)
		pool_free(&c->pools[i]);
	free(c->pools);
	c->pools = NULL;
	c->n_pools = 0;
	for (size_t i = 0; i < c->n_counts; i++)
		free(c->counts[i].v);
	free(c->counts);
	c->counts = NULL;
	c->n_counts = 0;
	memset(&c->fs, 0, sizeof(c->fs));
	memset(c->faults, 0, sizeof(c->faults));
	c->rate = DEFAULT_RATE;
}

void emu_client_free(struct emu_client *c)
{
	if (c == NULL)
		return;
	model_clear(c);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

bool emu_client_busy(struct emu_client *c)
{
	pthread_mutex_lock(&c->mu);
	bool busy = c->in_calls > 0;
	pthread_mutex_unlock(&c->mu);
	return busy;
}

void emu_client_run(struct emu_client *c)
{
	pthread_mutex_lock(&c->mu);
	c->shutdown = false;
	c->rconfc = false;
	pthread_mutex_unlock(&c->mu);
}

void emu_client_stop(struct emu_client *c)
{
	pthread_mutex_lock(&c->mu);
	c->shutdown = true;
	c->rconfc = false;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

static struct emu_pool *pool_find(struct emu_client *c, const struct hax_fid *f)
{
	for (size_t i = 0; i < c->n_pools; i++) {
		if (fid_eq(&c->pools[i].fid, f))
			return &c->pools[i];
	}
	return NULL;
}

static struct emu_pver *pver_find(struct emu_client *c, const struct hax_fid *f,
				  const struct emu_pool **owner)
{
	for (size_t i = 0; i < c->n_pools; i++) {
		struct emu_pool *p = &c->pools[i];
		for (uint32_t j = 0; j < p->n_pvers; j++) {
			if (fid_eq(&p->pvers[j].fid, f)) {
				if (owner != NULL)
					*owner = p;
				return &p->pvers[j];
			}
		}
	}
	return NULL;
}

static bool ios_known(struct emu_client *c, const struct hax_fid *f)
{
	for (size_t i = 0; i < c->n_pools; i++) {
		const struct emu_pool *p = &c->pools[i];
		for (uint32_t j = 0; j < p->n_ios; j++) {
			if (fid_eq(&p->ios[j], f))
				return true;
		}
	}
	return false;
}

static struct emu_counts *counts_find(struct emu_client *c, const struct hax_fid *f)
{
	for (size_t i = 0; i < c->n_counts; i++) {
		if (fid_eq(&c->counts[i].ios, f))
			return &c->counts[i];
	}
	return NULL;
}

/* Brings a copy machine's progress up to now; a finished run goes idle. */
static void cm_settle(const struct emu_client *c, struct emu_cm *m, uint64_t now)
{
	if (m->state == HAX_CM_STARTED && now > m->at_ms) {
		uint64_t step = (uint64_t)c->rate * (now - m->at_ms);
		m->progress = step >= PROGRESS_DONE - m->progress ? PROGRESS_DONE
								  : m->progress + step;
		if (m->progress == PROGRESS_DONE)
			m->state = HAX_CM_IDLE;
	}
	m->at_ms = now;
}

static void settle_all(struct emu_client *c)
{
	uint64_t now = mono_ms();
	for (size_t i = 0; i < c->n_pools; i++) {
		cm_settle(c, &c->pools[i].cm[0], now);
		cm_settle(c, &c->pools[i].cm[1], now);
	}
}

/* --- client calls ------------------------------------------------------- */

/*
 * Takes c->mu for a client call that passed the thread and lifecycle checks.
 * Returns 0 with the lock held, or a code with it released.
 */
static int call_begin(struct emu_client *c, bool need_rconfc)
{
	pthread_mutex_lock(&c->mu);
	int rc = 0;
	if (c->shutdown)
		rc = HAX_E_STATE;
	else if (need_rconfc && !c->rconfc)
		rc = HAX_E_RCONFC;
	if (rc != 0) {
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	c->in_calls++;
	return 0;
}

static int call_end(struct emu_client *c, int rc)
{
	c->in_calls--;
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/* Applies an injected fault to a call of `op`: waits its delay (stop cuts it
 * short with -ESHUTDOWN) and returns its code. */
static int fault_apply(struct emu_client *c, int op)
{
	struct emu_fault *f = &c->faults[op];
	if (f->count == 0)
		return 0;
	f->count--;
	int rc = f->rc;
	if (f->delay_ms > 0) {
		uint64_t ms = f->delay_ms;
		struct timespec dl;
		clock_gettime(CLOCK_MONOTONIC, &dl);
		dl.tv_sec += (time_t)(ms / 1000);
		dl.tv_nsec += (long)(ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		c->delayed++;
		while (!c->shutdown && pthread_cond_timedwait(&c->cv, &c->mu, &dl) != ETIMEDOUT)
			;
		c->delayed--;
		if (c->shutdown)
			return -ESHUTDOWN;
	}
	return rc;
}

int hax_glue_rconfc_start(hax_glue *h, const struct hax_fid *profile)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "rconfc_start");
	if (rc != 0)
		return rc;
	if (profile == NULL || (uint8_t)(profile->container >> 56) != 'p')
		return HAX_E_INVAL;
	struct emu_client *c = h->client;
	rc = call_begin(c, false);
	if (rc != 0)
		return rc;
	rc = fault_apply(c, EMU_OP_RCONFC_START);
	if (rc == 0 && c->rconfc)
		rc = -EALREADY;
	if (rc == 0) {
		c->rconfc = true;
		c->profile = *profile;
	}
	return call_end(c, rc);
}

int hax_glue_rconfc_stop(hax_glue *h)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "rconfc_stop");
	if (rc != 0)
		return rc;
	struct emu_client *c = h->client;
	rc = call_begin(c, false);
	if (rc != 0)
		return rc;
	c->rconfc = false;
	return call_end(c, 0);
}

int hax_glue_rconfc_ready(hax_glue *h)
{
	if (h == NULL || h->client == NULL)
		return 0;
	pthread_mutex_lock(&h->client->mu);
	bool ready = h->client->rconfc;
	pthread_mutex_unlock(&h->client->mu);
	return ready ? 1 : 0;
}

/*
 * The state machine of one copy machine, as real Motr runs it: every control
 * call is answered 0 (spiel checks RPC errors only, and the trigger handler
 * turns the copy machine's -EBUSY into success), so what an op did shows only
 * in the status. A machine paused or started from idle has done nothing yet:
 * its progress starts from 0.
 */
static void cm_op(struct emu_cm *m, uint32_t op)
{
	switch (op) {
	case HAX_SNS_START:
		if (m->state != HAX_CM_STARTED && m->state != HAX_CM_PAUSED) {
			m->state = HAX_CM_STARTED;
			m->progress = 0;
		}
		return;
	case HAX_SNS_ABORT:
		if (m->state != HAX_CM_FAILED)
			m->state = HAX_CM_IDLE;
		return;
	case HAX_SNS_QUIESCE:
		if (m->state == HAX_CM_IDLE)
			m->progress = 0;
		if (m->state == HAX_CM_IDLE || m->state == HAX_CM_STARTED)
			m->state = HAX_CM_PAUSED;
		return;
	default: /* HAX_SNS_CONTINUE */
		if (m->state == HAX_CM_IDLE)
			m->progress = 0;
		if (m->state == HAX_CM_IDLE || m->state == HAX_CM_PAUSED)
			m->state = HAX_CM_STARTED;
		return;
	}
}

int hax_glue_sns(hax_glue *h, uint32_t kind, uint32_t op, const struct hax_fid *pool)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "sns");
	if (rc != 0)
		return rc;
	if (pool == NULL || kind > HAX_SNS_REBALANCE || op > HAX_SNS_CONTINUE)
		return HAX_E_INVAL;
	struct emu_client *c = h->client;
	rc = call_begin(c, true);
	if (rc != 0)
		return rc;
	rc = fault_apply(c, EMU_OP_SNS);
	if (rc == 0) {
		struct emu_pool *p = pool_find(c, pool);
		if (p == NULL) {
			rc = -ENOENT;
		} else {
			cm_settle(c, &p->cm[kind], mono_ms());
			cm_op(&p->cm[kind], op);
		}
	}
	return call_end(c, rc);
}

int hax_glue_sns_status(hax_glue *h, uint32_t kind, const struct hax_fid *pool,
			struct hax_sns_status *out, uint32_t cap, uint32_t *nr_out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "sns_status");
	if (rc != 0)
		return rc;
	if (pool == NULL || nr_out == NULL || kind > HAX_SNS_REBALANCE || (out == NULL && cap > 0))
		return HAX_E_INVAL;
	struct emu_client *c = h->client;
	rc = call_begin(c, true);
	if (rc != 0)
		return rc;
	rc = fault_apply(c, EMU_OP_SNS_STATUS);
	struct emu_pool *p = rc == 0 ? pool_find(c, pool) : NULL;
	if (rc == 0 && p == NULL)
		rc = -ENOENT;
	if (rc == 0 && p->n_ios > cap) {
		*nr_out = p->n_ios;
		rc = HAX_E_LIMIT;
	}
	if (rc == 0) {
		struct emu_cm *m = &p->cm[kind];
		cm_settle(c, m, mono_ms());
		for (uint32_t i = 0; i < p->n_ios; i++) {
			out[i] = (struct hax_sns_status){
				.fid = p->ios[i],
				.state = m->state,
				.progress = m->progress / 1000u,
			};
		}
		*nr_out = p->n_ios;
	}
	return call_end(c, rc);
}

int hax_glue_pver_status(hax_glue *h, const struct hax_fid *pver, struct hax_pver_info *out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "pver_status");
	if (rc != 0)
		return rc;
	if (pver == NULL || out == NULL)
		return HAX_E_INVAL;
	struct emu_client *c = h->client;
	rc = call_begin(c, true);
	if (rc != 0)
		return rc;
	rc = fault_apply(c, EMU_OP_PVER_STATUS);
	const struct emu_pver *v = rc == 0 ? pver_find(c, pver, NULL) : NULL;
	if (rc == 0 && v == NULL)
		rc = -ENOENT;
	if (rc == 0) {
		*out = (struct hax_pver_info){
			.fid = v->fid,
			.state = v->state,
			.data_units = v->n,
			.parity_units = v->k,
			.pool_width = v->p,
			.unit_size = v->unit_size,
		};
	}
	return call_end(c, rc);
}

int hax_glue_fs_stats(hax_glue *h, struct hax_fs_stats *out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "fs_stats");
	if (rc != 0)
		return rc;
	if (out == NULL)
		return HAX_E_INVAL;
	struct emu_client *c = h->client;
	rc = call_begin(c, true);
	if (rc != 0)
		return rc;
	rc = fault_apply(c, EMU_OP_FS_STATS);
	if (rc == 0)
		*out = c->fs;
	return call_end(c, rc);
}

int hax_glue_proc_counters(hax_glue *h, const struct hax_fid *ios, struct hax_fid *proc_fid_out,
			   struct hax_pver_count *out, uint32_t cap, uint32_t *nr_out)
{
	if (h == NULL)
		return HAX_E_INVAL;
	int rc = emu_client_enter(h, "proc_counters");
	if (rc != 0)
		return rc;
	if (ios == NULL || proc_fid_out == NULL || nr_out == NULL || (out == NULL && cap > 0))
		return HAX_E_INVAL;
	struct emu_client *c = h->client;
	rc = call_begin(c, true);
	if (rc != 0)
		return rc;
	rc = fault_apply(c, EMU_OP_PROC_COUNTERS);
	const struct emu_counts *k = rc == 0 ? counts_find(c, ios) : NULL;
	if (rc == 0 && k == NULL && !ios_known(c, ios))
		rc = -ENOENT;
	uint32_t n = k != NULL ? k->n : 0;
	if (rc == 0 && n > cap) {
		*nr_out = n;
		rc = HAX_E_LIMIT;
	}
	if (rc == 0) {
		if (n > 0)
			memcpy(out, k->v, n * sizeof(*out));
		*proc_fid_out = *ios;
		*nr_out = n;
	}
	return call_end(c, rc);
}

/* --- control frames (network thread, h->mu held) ------------------------ */

/* Defines (or replaces) a pool; its copy machines start idle. */
static int ctl_pool(struct emu_client *c, struct emu_rd *r)
{
	struct emu_pool p = {0};
	int rc = 0;
	rd_fid(r, &p.fid);
	p.n_ios = rd_u32(r);
	if (r->bad == NULL && p.n_ios > r->n / 16)
		r->bad = "ioservice count over the frame's length";
	if (r->bad == NULL && p.n_ios > 0 && (p.ios = calloc(p.n_ios, sizeof(*p.ios))) == NULL)
		rc = -ENOMEM;
	for (uint32_t i = 0; r->bad == NULL && rc == 0 && i < p.n_ios; i++)
		rd_fid(r, &p.ios[i]);
	p.n_pvers = rd_u32(r);
	if (r->bad == NULL && p.n_pvers > r->n / 40)
		r->bad = "pool version count over the frame's length";
	if (r->bad == NULL && rc == 0 && p.n_pvers > 0 &&
	    (p.pvers = calloc(p.n_pvers, sizeof(*p.pvers))) == NULL)
		rc = -ENOMEM;
	for (uint32_t i = 0; r->bad == NULL && rc == 0 && i < p.n_pvers; i++) {
		struct emu_pver *v = &p.pvers[i];
		rd_fid(r, &v->fid);
		v->state = rd_u32(r);
		v->n = rd_u32(r);
		v->k = rd_u32(r);
		v->p = rd_u32(r);
		v->unit_size = rd_u64(r);
	}
	if (rc == 0)
		rd_end(r);
	if (r->bad == NULL && rc == 0 && fid_zero(&p.fid))
		rc = -EINVAL;
	for (uint32_t i = 0; r->bad == NULL && rc == 0 && i < p.n_pvers; i++) {
		const struct emu_pver *v = &p.pvers[i];
		const struct emu_pool *owner = NULL;
		if (v->state > HAX_PVER_DAMAGED || fid_zero(&v->fid))
			rc = -EINVAL;
		else if (pver_find(c, &v->fid, &owner) != NULL && !fid_eq(&owner->fid, &p.fid))
			rc = -EEXIST;
		for (uint32_t j = 0; rc == 0 && j < i; j++) {
			if (fid_eq(&p.pvers[j].fid, &v->fid))
				rc = -EEXIST;
		}
	}
	if (r->bad != NULL || rc != 0) {
		pool_free(&p);
		return rc;
	}
	p.cm[0].state = p.cm[1].state = HAX_CM_IDLE;
	p.cm[0].at_ms = p.cm[1].at_ms = mono_ms();
	struct emu_pool *old = pool_find(c, &p.fid);
	if (old != NULL) {
		pool_free(old);
		*old = p;
		return 0;
	}
	struct emu_pool *np = realloc(c->pools, (c->n_pools + 1) * sizeof(*np));
	if (np == NULL) {
		pool_free(&p);
		return -ENOMEM;
	}
	c->pools = np;
	c->pools[c->n_pools++] = p;
	return 0;
}

static int ctl_pver_state(struct emu_client *c, struct emu_rd *r)
{
	struct hax_fid f;
	rd_fid(r, &f);
	uint32_t state = rd_u32(r);
	rd_end(r);
	if (r->bad != NULL)
		return 0;
	if (state > HAX_PVER_DAMAGED)
		return -EINVAL;
	struct emu_pver *v = pver_find(c, &f, NULL);
	if (v == NULL)
		return -ENOENT;
	v->state = state;
	return 0;
}

static int ctl_fs_stats(struct emu_client *c, struct emu_rd *r)
{
	struct hax_fs_stats s;
	s.free_seg = rd_u64(r);
	s.total_seg = rd_u64(r);
	s.free_disk = rd_u64(r);
	s.avail_disk = rd_u64(r);
	s.total_disk = rd_u64(r);
	s.svc_total = rd_u32(r);
	s.svc_replied = rd_u32(r);
	rd_end(r);
	if (r->bad == NULL)
		c->fs = s;
	return 0;
}

static int ctl_counters(struct emu_client *c, struct emu_rd *r)
{
	struct hax_fid ios;
	rd_fid(r, &ios);
	uint32_t n = rd_u32(r);
	if (r->bad == NULL && n > r->n / 40)
		r->bad = "counter count over the frame's length";
	struct hax_pver_count *v = NULL;
	if (r->bad == NULL && n > 0) {
		v = calloc(n, sizeof(*v));
		if (v == NULL)
			return -ENOMEM;
	}
	for (uint32_t i = 0; r->bad == NULL && i < n; i++) {
		rd_fid(r, &v[i].pver);
		v[i].user_id = rd_u64(r);
		v[i].byte_count = rd_u64(r);
		v[i].object_count = rd_u64(r);
	}
	rd_end(r);
	if (r->bad != NULL || fid_zero(&ios)) {
		free(v);
		return r->bad != NULL ? 0 : -EINVAL;
	}
	struct emu_counts *k = counts_find(c, &ios);
	if (k == NULL) {
		struct emu_counts *nk = realloc(c->counts, (c->n_counts + 1) * sizeof(*nk));
		if (nk == NULL) {
			free(v);
			return -ENOMEM;
		}
		c->counts = nk;
		k = &c->counts[c->n_counts++];
		k->ios = ios;
		k->v = NULL;
	}
	free(k->v);
	k->v = v;
	k->n = n;
	return 0;
}

static int ctl_sns_rate(struct emu_client *c, struct emu_rd *r)
{
	uint32_t rate = rd_u32(r);
	rd_end(r);
	if (r->bad != NULL)
		return 0;
	if (rate > PROGRESS_DONE)
		return -EINVAL;
	settle_all(c);
	c->rate = rate;
	return 0;
}

static int ctl_sns_fail(struct emu_client *c, struct emu_rd *r)
{
	struct hax_fid f;
	rd_fid(r, &f);
	uint8_t kind = rd_u8(r);
	rd_end(r);
	if (r->bad != NULL)
		return 0;
	if (kind > HAX_SNS_REBALANCE)
		return -EINVAL;
	struct emu_pool *p = pool_find(c, &f);
	if (p == NULL)
		return -ENOENT;
	cm_settle(c, &p->cm[kind], mono_ms());
	p->cm[kind].state = HAX_CM_FAILED;
	return 0;
}

static int ctl_fault(struct emu_client *c, struct emu_rd *r)
{
	uint8_t op = rd_u8(r);
	uint32_t count = rd_u32(r);
	int32_t rc = (int32_t)rd_u32(r);
	uint32_t delay = rd_u32(r);
	rd_end(r);
	if (r->bad != NULL)
		return 0;
	if (op == 0 || op >= EMU_OP_NR || rc > 0 || delay > 600000u)
		return -EINVAL;
	c->faults[op] = (struct emu_fault){.count = count, .rc = rc, .delay_ms = delay};
	return 0;
}

void emu_client_on_ctl(hax_glue *h, struct emu_conn *conn, const uint8_t *body, size_t len)
{
	struct emu_rd r = {body, len, NULL};
	uint64_t seq = rd_u64(&r);
	uint8_t op = rd_u8(&r);
	struct emu_client *c = h->client;
	int rc = 0;
	pthread_mutex_lock(&c->mu);
	switch (op) {
	case EMU_CTL_POOL:
		rc = ctl_pool(c, &r);
		break;
	case EMU_CTL_PVER_STATE:
		rc = ctl_pver_state(c, &r);
		break;
	case EMU_CTL_FS_STATS:
		rc = ctl_fs_stats(c, &r);
		break;
	case EMU_CTL_COUNTERS:
		rc = ctl_counters(c, &r);
		break;
	case EMU_CTL_SNS_RATE:
		rc = ctl_sns_rate(c, &r);
		break;
	case EMU_CTL_SNS_FAIL:
		rc = ctl_sns_fail(c, &r);
		break;
	case EMU_CTL_FAULT:
		rc = ctl_fault(c, &r);
		break;
	case EMU_CTL_CLEAR:
		rd_end(&r);
		if (r.bad == NULL)
			model_clear(c);
		break;
	case EMU_CTL_DELAYED:
		rd_end(&r);
		rc = (int)c->delayed;
		break;
	default:
		if (r.bad == NULL)
			r.bad = "unknown control operation";
		break;
	}
	pthread_mutex_unlock(&c->mu);
	if (r.bad != NULL) {
		emu_conn_doom(h, conn, "bad CTL (operation %u): %s", op, r.bad);
		return;
	}
	emu_logf(h, HAX_LOG_DEBUG, "control %u (seq %llu) from connection %llu: rc %d", op,
		 (unsigned long long)seq, (unsigned long long)conn->id, rc);
	uint8_t *p = emu_conn_frame(h, conn, F_CTL_R, 12);
	if (p != NULL) {
		emu_put_u64(p, seq);
		emu_put_u32(p + 8, (uint32_t)rc);
	}
}
