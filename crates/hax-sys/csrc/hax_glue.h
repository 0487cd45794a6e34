/*
 * hax_glue.h - the flat C ABI between hax and Motr's m0_halon_interface.
 *
 * Two implementations exist: the emulator (default, hax_glue_emu.c) and the
 * real libmotr (feature "motr", hax_glue_motr.c). This header needs no Motr
 * header and is the only one bindgen reads.
 *
 * Threads: callbacks run on threads owned by the implementation. Every
 * function below must be called from a thread the implementation knows: the
 * thread that called hax_glue_init(), a thread that runs a callback, or a
 * thread registered with hax_glue_thread_adopt(). Other threads get
 * HAX_E_THREAD. start, stop and fini must run on the init thread.
 */
#ifndef HAX_GLUE_H
#define HAX_GLUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HAX_GLUE_ABI_VERSION 3u
#define HAX_NOTES_MAX 1024u /* == M0_HA_STATE_UPDATE_LIMIT */
#define HAX_EP_MAX 256u     /* >= M0_NET_IP_STRLEN_MAX + NUL */

typedef struct hax_glue hax_glue; /* opaque */
typedef uint64_t hax_link_id;     /* 0 = none; never reused by one handle */

struct hax_fid {
	uint64_t container;
	uint64_t key;
}; /* == struct m0_fid */

struct hax_u128 {
	uint64_t hi;
	uint64_t lo;
}; /* == struct m0_uint128 */

struct hax_note {
	struct hax_fid id;
	uint32_t state; /* enum hax_ha_state */
	uint32_t pad_;
};

/* 0 = ok; negative errno values pass through; glue codes are <= -10001. */
enum hax_rc {
	HAX_OK = 0,
	HAX_E_STATE = -10001,  /* call not allowed in the current lifecycle state */
	HAX_E_NOLINK = -10002, /* unknown link id, or link already disconnected */
	HAX_E_NOREQ = -10003,  /* entrypoint req_id unknown or already replied */
	HAX_E_NOTAG = -10004,  /* tag is not an undelivered received message */
	HAX_E_LIMIT = -10005,  /* nr_notes or a table size over its limit */
	HAX_E_ORDER = -10006,  /* disconnect without link_is_disconnecting, or twice */
	HAX_E_THREAD = -10007, /* calling thread unknown to the implementation */
	HAX_E_TAG = -10008,    /* send with msg->tag != 0 */
	HAX_E_NVEC = -10009,   /* NVEC that Motr would assert on (see docs) */
	HAX_E_COOKIE = -10010, /* failvec reply whose cookie matches no request */
	HAX_E_INVAL = -10011,  /* bad argument: NULL, bad endpoint, bad type */
	HAX_E_UNDELIVERED = -10012, /* disconnect with received messages not delivered */
	HAX_E_HANG = -10013,   /* stop() would hang in Motr; reported, then forced */
	HAX_E_RCONFC = -10014, /* client call while rconfc is not started */
	HAX_E_WITHHELD = -10015, /* stop() cut short: entrypoint requests withheld */
};

/* Values identical to enum m0_ha_msg_type (ha/msg.h). */
enum hax_msg_type {
	HAX_MSG_INVALID = 0,
	HAX_MSG_STOB_IOQ = 1,
	HAX_MSG_NVEC = 2,
	HAX_MSG_FVEC_REQ = 3,
	HAX_MSG_FVEC_REP = 4,
	HAX_MSG_KEEPALIVE_REQ = 5,
	HAX_MSG_KEEPALIVE_REP = 6,
	HAX_MSG_EVENT_PROCESS = 7,
	HAX_MSG_EVENT_SERVICE = 8,
	HAX_MSG_EVENT_RPC = 9,
	HAX_MSG_BE_IO_ERR = 10,
	HAX_MSG_SNS_ERR = 11,
};

/* Values identical to enum m0_ha_obj_state (ha/note.h). */
enum hax_ha_state {
	HAX_NC_UNKNOWN = 0,
	HAX_NC_ONLINE = 1,
	HAX_NC_FAILED = 2,
	HAX_NC_TRANSIENT = 3,
	HAX_NC_REPAIR = 4,
	HAX_NC_REPAIRED = 5,
	HAX_NC_REBALANCE = 6,
	HAX_NC_DTM_RECOVERING = 7,
};

enum hax_nvec_dir { HAX_NVEC_SET = 0, HAX_NVEC_GET = 1 };

struct hax_stob_ioq {
	struct hax_fid conf_sdev;
	struct hax_fid stob_domain;
	struct hax_fid stob_fid;
	int64_t fd;
	int64_t opcode;
	int64_t rc;
	uint64_t offset;
	uint64_t size;
	uint32_t bshift;
	uint32_t pad_;
};
struct hax_nvec {
	uint64_t dir; /* enum hax_nvec_dir */
	uint64_t id_of_get;
	uint64_t ignore_same;
};
struct hax_fvec {
	struct hax_fid pool;
	uint64_t cookie_addr;
	uint64_t cookie_gen;
};
struct hax_kalive {
	struct hax_u128 id;
	uint64_t counter; /* KEEPALIVE_REP only */
};
struct hax_event {
	uint64_t event; /* process: STARTING..DTM_RECOVERED; service: STARTING..FAILED */
	uint64_t type;  /* process type, or m0_conf_service_type */
	uint64_t pid;
};
struct hax_rpcev {
	uint64_t attempts;
	uint64_t state;
};
struct hax_err {
	uint32_t errcode;
	uint8_t location; /* BE_IO_ERR only */
	uint8_t opcode;
	uint16_t pad_;
};

/* A flat m0_ha_msg. notes[0..nr_notes) is used by NVEC and FVEC_REP only. */
struct hax_msg {
	struct hax_fid fid;
	struct hax_fid source_process;
	struct hax_fid source_service;
	uint64_t time_ns; /* m0_time_t: ns since the Unix epoch */
	uint64_t epoch;
	uint64_t tag; /* set on receive; must be 0 on send */
	uint32_t type; /* enum hax_msg_type */
	uint32_t nr_notes;
	union {
		struct hax_stob_ioq stob_ioq;
		struct hax_nvec nvec;
		struct hax_fvec fvec; /* FVEC_REQ and FVEC_REP */
		struct hax_kalive keepalive;
		struct hax_event event; /* EVENT_PROCESS, EVENT_SERVICE */
		struct hax_rpcev rpc;
		struct hax_err err; /* BE_IO_ERR, SNS_ERR */
	} u;
	struct hax_note notes[HAX_NOTES_MAX];
};

enum hax_log_level { HAX_LOG_ERROR = 1, HAX_LOG_WARN = 2, HAX_LOG_INFO = 3, HAX_LOG_DEBUG = 4 };

/*
 * Pointers passed to callbacks are valid only during the call. Callbacks must
 * not block and must not call start, stop or fini.
 */
struct hax_callbacks {
	void *user;
	void (*entrypoint_request)(void *user, const struct hax_u128 *req_id,
				   const char *remote_ep, const struct hax_fid *process_fid,
				   const char *git_rev_id, uint64_t pid, bool first_request);
	void (*msg_received)(void *user, hax_link_id link, const struct hax_msg *msg);
	void (*msg_delivered)(void *user, hax_link_id link, uint64_t tag);
	void (*msg_not_delivered)(void *user, hax_link_id link, uint64_t tag);
	/* link_connected, link_reused and link_absent run inside
	 * hax_glue_entrypoint_reply(), on the replying thread. */
	void (*link_connected)(void *user, const struct hax_u128 *req_id, hax_link_id link,
			       const char *remote_ep, const struct hax_fid *process_fid);
	void (*link_reused)(void *user, const struct hax_u128 *req_id, hax_link_id link);
	void (*link_absent)(void *user, const struct hax_u128 *req_id);
	void (*link_is_disconnecting)(void *user, hax_link_id link);
	void (*link_disconnected)(void *user, hax_link_id link);
	/* Optional (may be NULL). A call that would make real Motr assert or
	 * hang: the call is refused with `code` (or, in stop(), forced). */
	void (*contract_violation)(void *user, int32_t code, const char *detail);
	/* Optional (may be NULL): diagnostics of the implementation. */
	void (*log)(void *user, int32_t level, const char *text);
};

uint32_t hax_glue_abi_version(void);
/* "emulator" or "motr". */
const char *hax_glue_backend(void);

/*
 * debug_options: Motr's debug options string; the emulator also reads
 * "emu-stop-timeout-ms=N" (how long stop() waits before it reports a hang).
 * The calling thread becomes the init thread.
 */
int hax_glue_init(hax_glue **out, const char *debug_options, const char *node_uuid);
int hax_glue_fini(hax_glue *h);

/*
 * How many receive buffers the interface keeps posted once started. Motr's
 * halon interface provisions and posts 100, each of the transport's RPC
 * segment size (1 MiB on libfabric), zeroed, so resident; m0d itself posts 2.
 * With n > 0, start() has Motr repost a completed buffer only while fewer
 * than n are posted, and gives back the pages of the posted buffers past
 * the first n (they come back as messages fill them). 0 (the default)
 * leaves Motr's 100 as they are.
 * n above 100 is refused (HAX_E_INVAL). Init thread, before start().
 * The emulator has no receive pool: it takes the value and changes nothing.
 */
#define HAX_RECEIVE_BUFFERS_MAX 100u
int hax_glue_set_receive_buffers(hax_glue *h, uint32_t n);

/* Blocks until our own entrypoint request has been answered with rc 0. */
int hax_glue_start(hax_glue *h, const char *local_ep, const struct hax_fid *process_fid,
		   const struct hax_fid *ha_service_fid, const struct hax_fid *rm_service_fid,
		   const struct hax_callbacks *cbs);
/* Blocks; stops rconfc if it is running (client calls in progress return
 * -ESHUTDOWN), sends the stop events to self and runs the disconnect handshake on
 * every link. HAX_E_HANG: real Motr would have hung (details reported through
 * contract_violation); the emulator forced its way through.
 *
 * While stop() runs, an entrypoint request that is not first, from a process
 * other than our own that has no live link (none, or every one disconnected),
 * is withheld: never passed to entrypoint_request, never answered. Motr would
 * answer it, whatever the rc, with disconnected_previously, and the requester
 * asserts on that before it looks at the rc; unanswered, it keeps asking and
 * reaches the next HA. Motr's stop() waits for every request, so with one
 * withheld it cannot finish: once the links are gone, stop() returns
 * HAX_E_WITHHELD, no callback runs any more, the handle stays stopping (start
 * and fini give HAX_E_STATE; the handle is not freed) and the process is to
 * exit, which ends Motr's stop. The emulator reads "emu-ep-linger-ms=N": its
 * entrypoint service takes requests N ms more after the last link is gone
 * (Motr's stops only after every link's RPC disconnect, up to 5 s each). */
int hax_glue_stop(hax_glue *h);

/* Registers / unregisters the calling thread (m0_halon_interface_thread_adopt). */
int hax_glue_thread_adopt(hax_glue *h);
int hax_glue_thread_shun(hax_glue *h);

/* Non-blocking; any known thread, callbacks included. */
int hax_glue_entrypoint_reply(hax_glue *h, const struct hax_u128 *req_id, int32_t rc,
			      uint32_t confd_nr, const struct hax_fid *confd_fids,
			      const char *const *confd_eps, uint32_t quorum,
			      const struct hax_fid *rm_fid, const char *rm_ep);
int hax_glue_send(hax_glue *h, hax_link_id link, const struct hax_msg *msg, uint64_t *tag_out);
int hax_glue_delivered(hax_glue *h, hax_link_id link, uint64_t tag);
int hax_glue_disconnect(hax_glue *h, hax_link_id link);
int hax_glue_link_endpoint(hax_glue *h, hax_link_id link, char *buf, size_t len);

/*
 * --- Motr client operations (spiel) ---------------------------------------
 *
 * The calls below map one to one onto Motr's spiel API (spiel/spiel.h) over
 * the halon interface's own request handler: rconfc, SNS repair/rebalance
 * control and status, pool version status, filesystem stats and the byte
 * counters of an ioservice.
 *
 * Threads: every client call may be made from any thread the implementation
 * knows (see the top of this file), except the threads that run callbacks:
 * client calls block (spiel sends RPCs and waits for every reply, which can
 * take seconds), and a callback must not block. A call from a callback
 * thread or an unknown thread is refused with HAX_E_THREAD. Calls may run
 * concurrently on several threads; none of them holds up hax_glue_send() or
 * the callbacks.
 *
 * Lifecycle: client calls are allowed between a successful hax_glue_start()
 * and the beginning of hax_glue_stop(); otherwise HAX_E_STATE. Every call but
 * hax_glue_rconfc_start() and hax_glue_rconfc_stop() needs rconfc started:
 * otherwise HAX_E_RCONFC. hax_glue_stop() may begin while client calls are in
 * progress on other threads: it stops rconfc itself (the caller need not call
 * hax_glue_rconfc_stop() first), and calls in progress return -ESHUTDOWN as
 * soon as the implementation can make them (at once in the emulator; in Motr
 * when their RPCs end). A thread must still return from its client call
 * before hax_glue_fini().
 *
 * Return codes: 0; HAX_E_* for what the glue itself refuses (HAX_E_INVAL for
 * NULL pointers, bad enum values, a zero fid); otherwise the negative errno
 * Motr returned, passed through unchanged. The codes a caller can expect
 * from Motr (and from the emulator):
 *   -ENOENT     the pool, pool version or ioservice is not in the configuration
 *   -EBUSY, -EALREADY, -EPROTO
 *               the SNS operation is not allowed in the current state
 *   -ETIMEDOUT  a service did not answer in time
 *   -ESHUTDOWN  hax_glue_stop() began during the call
 * Output structs and arrays are written only when the call returns 0 (and
 * *nr_out also with HAX_E_LIMIT).
 */

/* Which copy machine an SNS call addresses. */
enum hax_sns_kind { HAX_SNS_REPAIR = 0, HAX_SNS_REBALANCE = 1 };

/* What an SNS call does: m0_spiel_sns_<kind>_{start,abort,quiesce,continue}. */
enum hax_sns_op {
	HAX_SNS_START = 0,
	HAX_SNS_ABORT = 1,
	HAX_SNS_QUIESCE = 2,
	HAX_SNS_CONTINUE = 3,
};

/* Values identical to enum m0_cm_status (cm/repreb/cm.h). */
enum hax_cm_status {
	HAX_CM_INVALID = 0,
	HAX_CM_IDLE = 1,
	HAX_CM_STARTED = 2,
	HAX_CM_FAILED = 3,
	HAX_CM_PAUSED = 4,
};

/* Values identical to enum m0_conf_pver_state (conf/pvers.h). */
enum hax_pver_state {
	HAX_PVER_HEALTHY = 0,  /* no failures */
	HAX_PVER_DEGRADED = 1, /* failures < K */
	HAX_PVER_CRITICAL = 2, /* failures == K */
	HAX_PVER_DAMAGED = 3,  /* failures > K */
};

/* One service's answer to an SNS status call (== m0_spiel_repreb_status). */
struct hax_sns_status {
	struct hax_fid fid; /* the SNS service (ioservice) fid */
	uint32_t state;     /* enum hax_cm_status */
	uint32_t pad_;
	uint64_t progress;  /* percent, 0..=100 */
};

/* m0_conf_pver_info, flattened. */
struct hax_pver_info {
	struct hax_fid fid;
	uint32_t state;        /* enum hax_pver_state */
	uint32_t data_units;   /* N (pa_N) */
	uint32_t parity_units; /* K (pa_K) */
	uint32_t pool_width;   /* P (pa_P) */
	uint64_t unit_size;    /* bytes (pa_unit_size) */
};

/* == struct m0_fs_stats. */
struct hax_fs_stats {
	uint64_t free_seg;    /* free bytes in BE segments */
	uint64_t total_seg;   /* total bytes in BE segments */
	uint64_t free_disk;   /* free bytes on drives */
	uint64_t avail_disk;  /* available bytes on drives */
	uint64_t total_disk;  /* total bytes on drives */
	uint32_t svc_total;   /* IOS, MDS and CAS services under the profile */
	uint32_t svc_replied; /* how many of them replied */
};

/* One (pool version, user) entry of an ioservice's byte-count tree
 * (m0_spiel_bckey + m0_spiel_bcrec). */
struct hax_pver_count {
	struct hax_fid pver;
	uint64_t user_id;
	uint64_t byte_count;
	uint64_t object_count;
};

/*
 * m0_spiel_cmd_profile_set() + m0_spiel_rconfc_start(). Blocks until rconfc
 * has its read lock and a confd quorum (or fails). `profile` must be a
 * profile fid (type 'p'; anything else: HAX_E_INVAL). -EALREADY when rconfc
 * is already started. Must not run concurrently with hax_glue_rconfc_stop().
 */
int hax_glue_rconfc_start(hax_glue *h, const struct hax_fid *profile);
/* m0_spiel_rconfc_stop(). 0 also when rconfc is not started. */
int hax_glue_rconfc_stop(hax_glue *h);
/* 1 when rconfc is started, 0 when not (or h is NULL). Any thread; never blocks. */
int hax_glue_rconfc_ready(hax_glue *h);

/*
 * m0_spiel_sns_<kind>_<op>(pool). kind is enum hax_sns_kind, op enum
 * hax_sns_op. Returns once every ioservice of the pool has answered.
 */
int hax_glue_sns(hax_glue *h, uint32_t kind, uint32_t op, const struct hax_fid *pool);

/*
 * m0_spiel_sns_<kind>_status(pool): one entry per ioservice of the pool,
 * written to out[0..*nr_out). With more entries than `cap`, returns
 * HAX_E_LIMIT with *nr_out set to the number needed (out untouched): call
 * again with a larger array. out may be NULL when cap is 0.
 */
int hax_glue_sns_status(hax_glue *h, uint32_t kind, const struct hax_fid *pool,
			struct hax_sns_status *out, uint32_t cap, uint32_t *nr_out);

/* m0_spiel_conf_pver_status(pver). */
int hax_glue_pver_status(hax_glue *h, const struct hax_fid *pver, struct hax_pver_info *out);

/* m0_spiel_filesystem_stats_fetch(). */
int hax_glue_fs_stats(hax_glue *h, struct hax_fs_stats *out);

/*
 * m0_spiel_count_stats_init() + m0_spiel_proc_counters_fetch(ios) (a failed
 * pc_rc is the call's result) + m0_spiel_count_stats_fini(). `ios` is the
 * ioservice's process fid (-EPERM when Motr does not see that process
 * online). *proc_fid_out
 * is pc_proc_fid; the entries go to out[0..*nr_out), with the same
 * HAX_E_LIMIT rule as hax_glue_sns_status().
 */
int hax_glue_proc_counters(hax_glue *h, const struct hax_fid *ios, struct hax_fid *proc_fid_out,
			   struct hax_pver_count *out, uint32_t cap, uint32_t *nr_out);

/* Contract violations seen so far (always 0 on real Motr, which asserts instead). */
uint64_t hax_glue_violations(hax_glue *h);

#ifdef __cplusplus
}
#endif
#endif /* HAX_GLUE_H */
