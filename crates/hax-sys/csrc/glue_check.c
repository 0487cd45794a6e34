/*
 * glue_check.c - the send-side message rules shared by the emulator and the
 * libmotr backend, so that both refuse exactly the same messages.
 */
#include "glue_check.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define FIDF "%#llx:%#llx"
#define FIDP(f) (unsigned long long)(f)->container, (unsigned long long)(f)->key

static uint8_t fid_type(const struct hax_fid *f)
{
	return (uint8_t)(f->container >> 56);
}

static const char *type_name(uint32_t t)
{
	static const char *const names[] = {
		"INVALID",       "STOB_IOQ",      "NVEC",      "FVEC_REQ",
		"FVEC_REP",      "KEEPALIVE_REQ", "KEEPALIVE_REP", "EVENT_PROCESS",
		"EVENT_SERVICE", "EVENT_RPC",     "BE_IO_ERR", "SNS_ERR",
	};
	return t < sizeof(names) / sizeof(names[0]) ? names[t] : "?";
}

static bool conf_type(uint8_t t)
{
	return t != 0 && strchr("tDpovjnrsdSaeckgl", t) != NULL;
}

int glue_check_msg(const struct hax_msg *m, char *why, size_t wlen)
{
	if (m->tag != 0) {
		snprintf(why, wlen, "msg->tag is %llu, must be 0", (unsigned long long)m->tag);
		return HAX_E_TAG;
	}
	if (m->type == HAX_MSG_INVALID || m->type > HAX_MSG_SNS_ERR) {
		snprintf(why, wlen, "message type %u is not valid", m->type);
		return HAX_E_INVAL;
	}
	if (m->type != HAX_MSG_NVEC && m->type != HAX_MSG_FVEC_REP)
		return 0;
	if (m->nr_notes > HAX_NOTES_MAX) {
		snprintf(why, wlen, "%s with %u notes, more than %u", type_name(m->type),
			 m->nr_notes, HAX_NOTES_MAX);
		return HAX_E_LIMIT;
	}
	if (m->type == HAX_MSG_FVEC_REP) {
		for (uint32_t i = 0; i < m->nr_notes; i++) {
			if (m->notes[i].state > HAX_NC_DTM_RECOVERING) {
				snprintf(why, wlen, "FVEC_REP note %u has state %u, out of range", i,
					 m->notes[i].state);
				return HAX_E_NVEC;
			}
		}
		return 0;
	}
	const struct hax_nvec *nv = &m->u.nvec;
	if (m->nr_notes == 0) {
		snprintf(why, wlen, "NVEC with no notes");
		return HAX_E_NVEC;
	}
	if (nv->dir > HAX_NVEC_GET) {
		snprintf(why, wlen, "NVEC direction %llu is neither SET nor GET",
			 (unsigned long long)nv->dir);
		return HAX_E_NVEC;
	}
	if (nv->ignore_same > 1) {
		snprintf(why, wlen, "NVEC ignore_same is %llu, not 0 or 1",
			 (unsigned long long)nv->ignore_same);
		return HAX_E_NVEC;
	}
	for (uint32_t i = 0; i < m->nr_notes; i++) {
		const struct hax_note *no = &m->notes[i];
		if (no->state > HAX_NC_DTM_RECOVERING) {
			snprintf(why, wlen, "NVEC note %u has state %u, out of range", i, no->state);
			return HAX_E_NVEC;
		}
		if (nv->dir != HAX_NVEC_SET)
			continue;
		if (no->state == HAX_NC_UNKNOWN) {
			snprintf(why, wlen, "NVEC SET note %u (" FIDF ") has state UNKNOWN", i,
				 FIDP(&no->id));
			return HAX_E_NVEC;
		}
		bool set = no->id.container != 0 || no->id.key != 0;
		uint8_t t = fid_type(&no->id);
		if (set && !conf_type(t)) {
			snprintf(why, wlen, "NVEC SET note %u: " FIDF " is not a conf object fid", i,
				 FIDP(&no->id));
			return HAX_E_NVEC;
		}
		if ((no->state == HAX_NC_REPAIR || no->state == HAX_NC_REBALANCE) && t != 'o' &&
		    t != 'd' && t != 'n' && t != 'k') {
			snprintf(why, wlen,
				 "NVEC SET note %u: %s on " FIDF
				 ", which is not a pool, sdev, node or drive",
				 i, no->state == HAX_NC_REPAIR ? "REPAIR" : "REBALANCE", FIDP(&no->id));
			return HAX_E_NVEC;
		}
	}
	return 0;
}
