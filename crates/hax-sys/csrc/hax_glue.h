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

#define HAX_GLUE_ABI_VERSION 1u
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

/* Blocks until our own entrypoint request has been answered with rc 0. */
int hax_glue_start(hax_glue *h, const char *local_ep, const struct hax_fid *process_fid,
		   const struct hax_fid *ha_service_fid, const struct hax_fid *rm_service_fid,
		   const struct hax_callbacks *cbs);
/* Blocks; sends the stop events to self and runs the disconnect handshake on
 * every link. HAX_E_HANG: real Motr would have hung (details reported through
 * contract_violation); the emulator forced its way through. */
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

/* Contract violations seen so far (always 0 on real Motr, which asserts instead). */
uint64_t hax_glue_violations(hax_glue *h);

#ifdef __cplusplus
}
#endif
#endif /* HAX_GLUE_H */
