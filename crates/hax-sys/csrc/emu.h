/*
 * emu.h - private to the emulator backend of hax_glue.h.
 *
 * The emulator stands in for Motr's HA layer: one handle owns a listening
 * socket, a network thread (poll loop), and one handler thread that plays
 * Motr's locality 0 and runs every asynchronous callback. All mutable state of
 * a handle is guarded by h->mu; nothing is global.
 */
#ifndef HAX_EMU_H
#define HAX_EMU_H

#include "hax_glue.h"

#include <pthread.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/un.h>

/* Protocol constants (docs/emulator-protocol.md). */
#define EMU_MAGIC 0x48415845u
#define EMU_VERSION 1u
#define EMU_FRAME_MAX 65536u
#define EMU_STR_MAX 255u
#define EMU_CONFD_MAX 64u
#define EMU_OUT_LIMIT (16u << 20)
#define EMU_FIDTAB_MAX 0x1000u /* HALON_INTERFACE_NVEC_SIZE_MAX */
#define EMU_IN_CAP (2u * (EMU_FRAME_MAX + 4u))
/* An input buffer at most this large stays with its connection when it
 * empties; a larger one is freed, so that a connection holds input memory
 * only while a frame is arriving. */
#define EMU_IN_KEEP 4096u
/* Defaults of the connection bounds (docs/emulator-protocol.md, "Limits"). */
#define EMU_DEFAULT_MAX_CONNS 4096u
#define EMU_DEFAULT_MAX_PENDING 1024u
#define EMU_DEFAULT_HELLO_TIMEOUT_MS 5000u
#define EMU_DEFAULT_FRAME_TIMEOUT_MS 10000u
/* A backlog (resend after reattach) is fed to a connection in slices, so
 * that it never counts as a peer that stopped reading. */
#define EMU_PUMP_LOW (256u << 10)
#define EMU_PUMP_HIGH (1u << 20)

enum emu_frame_type {
	F_HELLO = 0x01,
	F_EP_REQ = 0x02,
	F_MSG = 0x03,
	F_DELIVERED = 0x04,
	F_CTL = 0x05,
	F_HELLO_R = 0x81,
	F_EP_REP = 0x82,
	F_MSG_R = 0x83,
	F_DELIVERED_R = 0x84,
	F_NOLINK = 0x85,
	F_CTL_R = 0x86,
};

/* Control operations of a CTL frame (docs/emulator-protocol.md). */
enum emu_ctl_op {
	EMU_CTL_POOL = 1,
	EMU_CTL_PVER_STATE = 2,
	EMU_CTL_FS_STATS = 3,
	EMU_CTL_COUNTERS = 4,
	EMU_CTL_SNS_RATE = 5,
	EMU_CTL_SNS_FAIL = 6,
	EMU_CTL_FAULT = 7,
	EMU_CTL_CLEAR = 8,
	EMU_CTL_DELAYED = 9,
};

/* Client operations that faults can be injected into. */
enum emu_client_op {
	EMU_OP_RCONFC_START = 1,
	EMU_OP_SNS = 2,
	EMU_OP_SNS_STATUS = 3,
	EMU_OP_PVER_STATUS = 4,
	EMU_OP_FS_STATS = 5,
	EMU_OP_PROC_COUNTERS = 6,
	EMU_OP_NR,
};

/* Layout of an encoded msg (the protocol's `msg`). */
#define EMU_MSG_HDR 68u /* 3 fids, time, epoch, u32 type */
#define EMU_MSG_OFF_TYPE 64u
#define EMU_NOTE_WIRE 20u /* fid + u32 state */

/* --- little-endian primitives ------------------------------------------- */

static inline void emu_put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}
static inline void emu_put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline void emu_put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint16_t emu_get_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t emu_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}
static inline uint64_t emu_get_u64(const uint8_t *p)
{
	return (uint64_t)emu_get_u32(p) | (uint64_t)emu_get_u32(p + 4) << 32;
}

/* Sequential writer over a buffer sized in advance. */
struct emu_wr {
	uint8_t *p;
};
static inline void wr_u8(struct emu_wr *w, uint8_t v)
{
	*w->p++ = v;
}
static inline void wr_u16(struct emu_wr *w, uint16_t v)
{
	emu_put_u16(w->p, v);
	w->p += 2;
}
static inline void wr_u32(struct emu_wr *w, uint32_t v)
{
	emu_put_u32(w->p, v);
	w->p += 4;
}
static inline void wr_u64(struct emu_wr *w, uint64_t v)
{
	emu_put_u64(w->p, v);
	w->p += 8;
}
static inline void wr_fid(struct emu_wr *w, const struct hax_fid *f)
{
	wr_u64(w, f->container);
	wr_u64(w, f->key);
}
void wr_str(struct emu_wr *w, const char *s); /* s must be <= EMU_STR_MAX */

/* Bounds-checked sequential reader: once `bad`, every read yields 0. */
struct emu_rd {
	const uint8_t *p;
	size_t n;
	const char *bad; /* first problem found, NULL while the input is fine */
};
uint8_t rd_u8(struct emu_rd *r);
uint16_t rd_u16(struct emu_rd *r);
uint32_t rd_u32(struct emu_rd *r);
uint64_t rd_u64(struct emu_rd *r);
void rd_fid(struct emu_rd *r, struct hax_fid *f);
/* Copies a protocol `str` into out[EMU_STR_MAX + 1], NUL-terminated. */
void rd_str(struct emu_rd *r, char *out);
void rd_end(struct emu_rd *r); /* marks trailing bytes as bad */

/* --- message codec (emu_wire.c) ----------------------------------------- */

/* Encoded size of *m, or 0 when its type has no encoding. */
size_t emu_msg_size(const struct hax_msg *m);
/* Writes exactly emu_msg_size(m) bytes. */
void emu_msg_encode(const struct hax_msg *m, uint8_t *out);
/* Validates an encoded msg; NULL when fine, else why it is not. */
const char *emu_msg_check(const uint8_t *p, size_t n);
/*
 * Decodes a validated msg into *m, which the caller keeps zeroed between uses:
 * *dirty_notes is how many notes the previous decode left behind, so only
 * those are cleared instead of the whole 24 KB.
 */
void emu_msg_decode(const uint8_t *p, size_t n, struct hax_msg *m, uint32_t *dirty_notes);
bool emu_utf8_ok(const uint8_t *p, size_t n);
const char *emu_type_name(uint32_t type);

/* --- endpoints and sockets (emu_net.c) ---------------------------------- */

struct emu_ep {
	int family; /* AF_INET or AF_UNIX */
	struct sockaddr_storage sa;
	socklen_t salen;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

int emu_ep_parse(const char *s, struct emu_ep *ep);
/*
 * Rewrites a peer's LNet-form or "inet:stream:" endpoint (numeric IPv4) in
 * place into the emulator's own form "inet:tcp:<ip>@<port>", as Motr reports
 * a peer in its transport's form whatever form the peer was given. 1 when
 * rewritten, 0 when left as it is.
 */
int emu_ep_canonical(char *s, size_t size);
/* 0 and a listening non-blocking socket, or a negative errno. */
int emu_listen(const struct emu_ep *ep, int *fd_out);

/* Growable byte buffer. */
struct emu_buf {
	uint8_t *p;
	size_t len;
	size_t cap;
};
int emu_buf_reserve(struct emu_buf *b, size_t extra);
void emu_buf_free(struct emu_buf *b);

struct emu_req;
struct emu_link;

/*
 * A peer connection. Created, read, written and freed by the network thread
 * only; other threads reach it through link->conn / req->conn under h->mu and
 * only append to `out`.
 */
struct emu_conn {
	struct emu_conn *next;
	struct emu_conn *prev;
	uint64_t id;
	int fd;
	bool hello;           /* peer's HELLO seen */
	/* Accepted, no HELLO yet: on h's pending list, oldest first. */
	bool pending;
	struct emu_conn *pnext;
	struct emu_conn *pprev;
	uint64_t accepted_ms; /* monotonic */
	uint64_t frame_ms;    /* when the frame now in `in` began to arrive */
	bool doomed;          /* to be dropped by the network thread */
	bool quiet;           /* shed by a bound: logged at debug level */
	char why[160];        /* reason for dropping, logged on close */
	struct emu_buf out;   /* frames queued by any thread (under mu) */
	size_t wr_pending;    /* unsent bytes of `wr` (under mu) */
	struct emu_buf wr;    /* being written by the network thread, no lock */
	size_t wr_off;
	struct emu_buf in;    /* unparsed input, network thread only */
	struct emu_req *req;  /* outstanding EP_REQ, at most one */
	bool starved;         /* a link attached here has messages not yet queued */
	char peer[64];
};

/* --- the handle (hax_glue_emu.c) ---------------------------------------- */

enum emu_state { S_INIT = 0, S_STARTING, S_WORKING, S_STOPPING };

struct emu_ring { /* FIFO of uintptr_t, power-of-two capacity */
	uintptr_t *v;
	size_t head;
	size_t len;
	size_t cap;
};

struct emu_ev;
struct emu_logline;
struct emu_fidslot;
struct emu_client;

struct hax_glue {
	pthread_mutex_t mu;
	pthread_cond_t hcv; /* handler thread waits for events */
	pthread_cond_t wcv; /* start()/stop() wait for progress */
	pthread_t init_tid;
	enum emu_state state;
	uint32_t stop_timeout_ms;
	uint32_t start_timeout_ms;
	uint32_t ep_linger_ms; /* emu-ep-linger-ms: stop() serves requests this long after the links */
	/* Connection bounds: the options, then what start() makes of them
	 * under the descriptor limit. */
	uint32_t max_conns_opt;
	uint32_t max_pending_opt;
	uint32_t hello_timeout_ms; /* 0: none */
	uint32_t frame_timeout_ms; /* 0: none */
	uint32_t max_conns;
	uint32_t max_pending;
	bool log_msg;
	bool log_link;
	bool log_ep;

	pthread_t *adopted;
	size_t n_adopted;
	size_t cap_adopted;

	/* One run, from start() to the end of stop(). */
	struct hax_callbacks cbs;
	char local_ep[HAX_EP_MAX];
	struct hax_fid process_fid;
	struct hax_fid ha_fid;
	struct hax_fid rm_fid;
	struct hax_u128 cookie;
	uint64_t runs;
	uint64_t next_req;
	uint64_t next_link_id; /* kept across runs: ids are never reused */
	uint64_t generation;
	uint64_t ka_counter;
	struct emu_link **links; /* sorted by id */
	size_t n_links;
	size_t cap_links;
	struct emu_link *self;
	struct emu_req *reqs;
	/* Requests stop() withholds: never passed up, never answered (an answer
	 * would carry disconnected_previously). */
	struct emu_req *withheld;
	size_t n_withheld;
	struct emu_ev *evq_head;
	struct emu_ev *evq_tail;
	bool handler_sleeping;
	bool quit_handler;
	bool quit_net;
	bool closing; /* stop() no longer takes entrypoint requests */
	bool threads_up;
	pthread_t handler_tid;
	pthread_t net_tid;
	int wake_fd;
	bool net_kicked;
	bool kick_deferred;
	int listen_fd;
	struct emu_ep ep;
	struct emu_conn *conns;
	size_t n_conns;
	struct emu_conn *pending_head; /* oldest connection without HELLO */
	struct emu_conn *pending_tail;
	size_t n_pending;
	/* Connections shed since the last report (emu_net.c, shed_report). */
	uint64_t shed_hello;   /* no HELLO within the timeout */
	uint64_t shed_frame;   /* a frame left unfinished */
	uint64_t shed_pending; /* pending, closed to make room */
	uint64_t shed_refused; /* over the cap, closed at once */
	uint64_t shed_report_ms;
	uint64_t next_conn_id;
	struct emu_fidslot *fidtab;
	size_t fid_n;
	bool self_consumed;
	int replying; /* entrypoint replies inside their link callback */
	int waiters;
	struct hax_msg *scratch; /* handler thread only */
	uint32_t scratch_dirty;

	struct emu_client *client; /* the spiel model, from init to fini */

	uint64_t violations; /* __atomic */
};

/* Called with h->mu held: the line waits in a queue of the calling thread. */
void emu_logf(hax_glue *h, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Unlocks, then hands this thread's queued log lines to the log callback. */
void emu_unlock(hax_glue *h);
bool emu_logs_pending(void);
void emu_kick_net(hax_glue *h);
/* Reserves a frame on c's output: returns where its body goes, or NULL when
 * the connection is (now) doomed. */
uint8_t *emu_conn_frame(hax_glue *h, struct emu_conn *c, uint8_t type, size_t body_len);
void emu_conn_doom(hax_glue *h, struct emu_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A complete frame from c; drops c (emu_conn_doom) when it is bad. */
void emu_on_frame(hax_glue *h, struct emu_conn *c, uint8_t type, const uint8_t *body,
		  size_t len);
/* c is about to be freed: forget every reference to it. */
void emu_on_conn_close(hax_glue *h, struct emu_conn *c);
/* c's peer sent a valid HELLO: it no longer counts as pending. */
void emu_conn_hello(hax_glue *h, struct emu_conn *c);
/* start(): the connection bounds under the descriptor limit (h->mu held). */
void emu_conn_limits(hax_glue *h);
/* Queues more of the backlog of the links attached to c. */
void emu_pump_conn(hax_glue *h, struct emu_conn *c);

/* --- the client model (emu_client.c) ----------------------------------- */

struct emu_client *emu_client_new(void);
void emu_client_free(struct emu_client *c);
/* A client call is in progress on some thread. */
bool emu_client_busy(struct emu_client *c);
/* start() succeeded: client calls are allowed, rconfc is not started. */
void emu_client_run(struct emu_client *c);
/* stop() began: rconfc stops, delayed calls return -ESHUTDOWN. */
void emu_client_stop(struct emu_client *c);
/* A CTL frame from c (network thread, h->mu held). */
void emu_client_on_ctl(hax_glue *h, struct emu_conn *conn, const uint8_t *body, size_t len);
/* The thread and lifecycle checks of a client call (hax_glue_emu.c). */
int emu_client_enter(hax_glue *h, const char *fn);

void *emu_net_main(void *arg);
void emu_net_free_all(hax_glue *h); /* after the network thread is gone */

#endif /* HAX_EMU_H */
