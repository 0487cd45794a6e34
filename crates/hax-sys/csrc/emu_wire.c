/*
 * emu_wire.c - the emulator's frame codec: protocol primitives and the
 * encoding of struct hax_msg (docs/emulator-protocol.md, section `msg`).
 *
 * Queues hold messages in this compact encoding (68 bytes plus the payload,
 * 20 bytes per note), never as 24 KB structs.
 */
#include "emu.h"

#include <stdlib.h>
#include <string.h>

/* --- buffers ------------------------------------------------------------ */

int emu_buf_reserve(struct emu_buf *b, size_t extra)
{
	if (b->cap - b->len >= extra)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap - b->len < extra)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (p == NULL)
		return -1;
	b->p = p;
	b->cap = cap;
	return 0;
}

void emu_buf_free(struct emu_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* --- reader ------------------------------------------------------------- */

static const uint8_t *rd_take(struct emu_rd *r, size_t n)
{
	if (r->bad != NULL)
		return NULL;
	if (r->n < n) {
		r->bad = "body shorter than its fields";
		return NULL;
	}
	const uint8_t *p = r->p;
	r->p += n;
	r->n -= n;
	return p;
}

uint8_t rd_u8(struct emu_rd *r)
{
	const uint8_t *p = rd_take(r, 1);
	return p ? p[0] : 0;
}

uint16_t rd_u16(struct emu_rd *r)
{
	const uint8_t *p = rd_take(r, 2);
	return p ? emu_get_u16(p) : 0;
}

uint32_t rd_u32(struct emu_rd *r)
{
	const uint8_t *p = rd_take(r, 4);
	return p ? emu_get_u32(p) : 0;
}

uint64_t rd_u64(struct emu_rd *r)
{
	const uint8_t *p = rd_take(r, 8);
	return p ? emu_get_u64(p) : 0;
}

void rd_fid(struct emu_rd *r, struct hax_fid *f)
{
	f->container = rd_u64(r);
	f->key = rd_u64(r);
}

void rd_str(struct emu_rd *r, char *out)
{
	out[0] = '\0';
	uint16_t n = rd_u16(r);
	if (r->bad != NULL)
		return;
	if (n > EMU_STR_MAX) {
		r->bad = "string longer than 255 bytes";
		return;
	}
	const uint8_t *p = rd_take(r, n);
	if (p == NULL)
		return;
	if (!emu_utf8_ok(p, n)) {
		r->bad = "string is not UTF-8 without NUL";
		return;
	}
	memcpy(out, p, n);
	out[n] = '\0';
}

void rd_end(struct emu_rd *r)
{
	if (r->bad == NULL && r->n != 0)
		r->bad = "body longer than its fields";
}

void wr_str(struct emu_wr *w, const char *s)
{
	size_t n = strlen(s);
	wr_u16(w, (uint16_t)n);
	memcpy(w->p, s, n);
	w->p += n;
}

/*
 * Strict UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF).
 * NUL is refused too: strings reach C callbacks as NUL-terminated.
 */
bool emu_utf8_ok(const uint8_t *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = p[i];
		if (c == 0)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t len;
		uint32_t cp;
		uint32_t min;
		if ((c & 0xe0) == 0xc0) {
			len = 2;
			cp = c & 0x1f;
			min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3;
			cp = c & 0x0f;
			min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4;
			cp = c & 0x07;
			min = 0x10000;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* --- messages ----------------------------------------------------------- */

/* Payload size of fixed-size types; 0 for note-carrying and invalid ones. */
static size_t fixed_payload(uint32_t type)
{
	switch (type) {
	case HAX_MSG_STOB_IOQ:
		return 3 * 16 + 5 * 8 + 4;
	case HAX_MSG_FVEC_REQ:
		return 16 + 8 + 8;
	case HAX_MSG_KEEPALIVE_REQ:
		return 16;
	case HAX_MSG_KEEPALIVE_REP:
		return 24;
	case HAX_MSG_EVENT_PROCESS:
	case HAX_MSG_EVENT_SERVICE:
		return 24;
	case HAX_MSG_EVENT_RPC:
		return 16;
	case HAX_MSG_BE_IO_ERR:
		return 6;
	case HAX_MSG_SNS_ERR:
		return 5;
	default:
		return 0;
	}
}

#define NVEC_FIXED (3 * 8 + 4)
#define FVREP_FIXED (16 + 8 + 8 + 4)

size_t emu_msg_size(const struct hax_msg *m)
{
	switch (m->type) {
	case HAX_MSG_NVEC:
		return EMU_MSG_HDR + NVEC_FIXED + (size_t)m->nr_notes * EMU_NOTE_WIRE;
	case HAX_MSG_FVEC_REP:
		return EMU_MSG_HDR + FVREP_FIXED + (size_t)m->nr_notes * EMU_NOTE_WIRE;
	default: {
		size_t n = fixed_payload(m->type);
		return n ? EMU_MSG_HDR + n : 0;
	}
	}
}

static void wr_notes(struct emu_wr *w, const struct hax_msg *m)
{
	wr_u32(w, m->nr_notes);
	for (uint32_t i = 0; i < m->nr_notes; i++) {
		wr_fid(w, &m->notes[i].id);
		wr_u32(w, m->notes[i].state);
	}
}

void emu_msg_encode(const struct hax_msg *m, uint8_t *out)
{
	struct emu_wr w = {out};
	wr_fid(&w, &m->fid);
	wr_fid(&w, &m->source_process);
	wr_fid(&w, &m->source_service);
	wr_u64(&w, m->time_ns);
	wr_u64(&w, m->epoch);
	wr_u32(&w, m->type);
	switch (m->type) {
	case HAX_MSG_STOB_IOQ:
		wr_fid(&w, &m->u.stob_ioq.conf_sdev);
		wr_fid(&w, &m->u.stob_ioq.stob_domain);
		wr_fid(&w, &m->u.stob_ioq.stob_fid);
		wr_u64(&w, (uint64_t)m->u.stob_ioq.fd);
		wr_u64(&w, (uint64_t)m->u.stob_ioq.opcode);
		wr_u64(&w, (uint64_t)m->u.stob_ioq.rc);
		wr_u64(&w, m->u.stob_ioq.offset);
		wr_u64(&w, m->u.stob_ioq.size);
		wr_u32(&w, m->u.stob_ioq.bshift);
		break;
	case HAX_MSG_NVEC:
		wr_u64(&w, m->u.nvec.dir);
		wr_u64(&w, m->u.nvec.id_of_get);
		wr_u64(&w, m->u.nvec.ignore_same);
		wr_notes(&w, m);
		break;
	case HAX_MSG_FVEC_REQ:
	case HAX_MSG_FVEC_REP:
		wr_fid(&w, &m->u.fvec.pool);
		wr_u64(&w, m->u.fvec.cookie_addr);
		wr_u64(&w, m->u.fvec.cookie_gen);
		if (m->type == HAX_MSG_FVEC_REP)
			wr_notes(&w, m);
		break;
	case HAX_MSG_KEEPALIVE_REQ:
	case HAX_MSG_KEEPALIVE_REP:
		wr_u64(&w, m->u.keepalive.id.hi);
		wr_u64(&w, m->u.keepalive.id.lo);
		if (m->type == HAX_MSG_KEEPALIVE_REP)
			wr_u64(&w, m->u.keepalive.counter);
		break;
	case HAX_MSG_EVENT_PROCESS:
	case HAX_MSG_EVENT_SERVICE:
		wr_u64(&w, m->u.event.event);
		wr_u64(&w, m->u.event.type);
		wr_u64(&w, m->u.event.pid);
		break;
	case HAX_MSG_EVENT_RPC:
		wr_u64(&w, m->u.rpc.attempts);
		wr_u64(&w, m->u.rpc.state);
		break;
	case HAX_MSG_BE_IO_ERR:
		wr_u32(&w, m->u.err.errcode);
		wr_u8(&w, m->u.err.location);
		wr_u8(&w, m->u.err.opcode);
		break;
	case HAX_MSG_SNS_ERR:
		wr_u32(&w, m->u.err.errcode);
		wr_u8(&w, m->u.err.opcode);
		break;
	default:
		break;
	}
}

static const char *check_notes(const uint8_t *p, size_t n, size_t at)
{
	if (n < at + 4)
		return "body shorter than its fields";
	uint32_t nr = emu_get_u32(p + at);
	if (nr > HAX_NOTES_MAX)
		return "more than 1024 notes";
	size_t want = at + 4 + (size_t)nr * EMU_NOTE_WIRE;
	if (n < want)
		return "body shorter than its fields";
	if (n > want)
		return "body longer than its fields";
	for (uint32_t i = 0; i < nr; i++) {
		if (emu_get_u32(p + at + 4 + (size_t)i * EMU_NOTE_WIRE + 16) > HAX_NC_DTM_RECOVERING)
			return "note state out of range";
	}
	return NULL;
}

const char *emu_msg_check(const uint8_t *p, size_t n)
{
	if (n < EMU_MSG_HDR)
		return "body shorter than its fields";
	uint32_t type = emu_get_u32(p + EMU_MSG_OFF_TYPE);
	switch (type) {
	case HAX_MSG_NVEC:
		return check_notes(p, n, EMU_MSG_HDR + NVEC_FIXED - 4);
	case HAX_MSG_FVEC_REP:
		return check_notes(p, n, EMU_MSG_HDR + FVREP_FIXED - 4);
	default: {
		size_t want = fixed_payload(type);
		if (want == 0)
			return "message type out of range";
		if (n < EMU_MSG_HDR + want)
			return "body shorter than its fields";
		if (n > EMU_MSG_HDR + want)
			return "body longer than its fields";
		return NULL;
	}
	}
}

static void rd_notes(const uint8_t *p, struct hax_msg *m, uint32_t *dirty)
{
	uint32_t nr = emu_get_u32(p);
	p += 4;
	for (uint32_t i = 0; i < nr; i++, p += EMU_NOTE_WIRE) {
		m->notes[i].id.container = emu_get_u64(p);
		m->notes[i].id.key = emu_get_u64(p + 8);
		m->notes[i].state = emu_get_u32(p + 16);
	}
	m->nr_notes = nr;
	if (*dirty > nr)
		memset(&m->notes[nr], 0, (*dirty - nr) * sizeof(m->notes[0]));
	*dirty = nr;
}

void emu_msg_decode(const uint8_t *p, size_t n, struct hax_msg *m, uint32_t *dirty)
{
	(void)n;
	memset(m, 0, offsetof(struct hax_msg, notes));
	m->fid.container = emu_get_u64(p);
	m->fid.key = emu_get_u64(p + 8);
	m->source_process.container = emu_get_u64(p + 16);
	m->source_process.key = emu_get_u64(p + 24);
	m->source_service.container = emu_get_u64(p + 32);
	m->source_service.key = emu_get_u64(p + 40);
	m->time_ns = emu_get_u64(p + 48);
	m->epoch = emu_get_u64(p + 56);
	m->type = emu_get_u32(p + EMU_MSG_OFF_TYPE);
	const uint8_t *q = p + EMU_MSG_HDR;
	bool notes = false;
	switch (m->type) {
	case HAX_MSG_STOB_IOQ:
		m->u.stob_ioq.conf_sdev.container = emu_get_u64(q);
		m->u.stob_ioq.conf_sdev.key = emu_get_u64(q + 8);
		m->u.stob_ioq.stob_domain.container = emu_get_u64(q + 16);
		m->u.stob_ioq.stob_domain.key = emu_get_u64(q + 24);
		m->u.stob_ioq.stob_fid.container = emu_get_u64(q + 32);
		m->u.stob_ioq.stob_fid.key = emu_get_u64(q + 40);
		m->u.stob_ioq.fd = (int64_t)emu_get_u64(q + 48);
		m->u.stob_ioq.opcode = (int64_t)emu_get_u64(q + 56);
		m->u.stob_ioq.rc = (int64_t)emu_get_u64(q + 64);
		m->u.stob_ioq.offset = emu_get_u64(q + 72);
		m->u.stob_ioq.size = emu_get_u64(q + 80);
		m->u.stob_ioq.bshift = emu_get_u32(q + 88);
		break;
	case HAX_MSG_NVEC:
		m->u.nvec.dir = emu_get_u64(q);
		m->u.nvec.id_of_get = emu_get_u64(q + 8);
		m->u.nvec.ignore_same = emu_get_u64(q + 16);
		rd_notes(q + 24, m, dirty);
		notes = true;
		break;
	case HAX_MSG_FVEC_REQ:
	case HAX_MSG_FVEC_REP:
		m->u.fvec.pool.container = emu_get_u64(q);
		m->u.fvec.pool.key = emu_get_u64(q + 8);
		m->u.fvec.cookie_addr = emu_get_u64(q + 16);
		m->u.fvec.cookie_gen = emu_get_u64(q + 24);
		if (m->type == HAX_MSG_FVEC_REP) {
			rd_notes(q + 32, m, dirty);
			notes = true;
		}
		break;
	case HAX_MSG_KEEPALIVE_REQ:
	case HAX_MSG_KEEPALIVE_REP:
		m->u.keepalive.id.hi = emu_get_u64(q);
		m->u.keepalive.id.lo = emu_get_u64(q + 8);
		if (m->type == HAX_MSG_KEEPALIVE_REP)
			m->u.keepalive.counter = emu_get_u64(q + 16);
		break;
	case HAX_MSG_EVENT_PROCESS:
	case HAX_MSG_EVENT_SERVICE:
		m->u.event.event = emu_get_u64(q);
		m->u.event.type = emu_get_u64(q + 8);
		m->u.event.pid = emu_get_u64(q + 16);
		break;
	case HAX_MSG_EVENT_RPC:
		m->u.rpc.attempts = emu_get_u64(q);
		m->u.rpc.state = emu_get_u64(q + 8);
		break;
	case HAX_MSG_BE_IO_ERR:
		m->u.err.errcode = emu_get_u32(q);
		m->u.err.location = q[4];
		m->u.err.opcode = q[5];
		break;
	case HAX_MSG_SNS_ERR:
		m->u.err.errcode = emu_get_u32(q);
		m->u.err.opcode = q[4];
		break;
	default:
		break;
	}
	if (!notes && *dirty > 0) {
		memset(m->notes, 0, *dirty * sizeof(m->notes[0]));
		*dirty = 0;
	}
}

const char *emu_type_name(uint32_t type)
{
	static const char *const names[] = {
		"INVALID",       "STOB_IOQ",      "NVEC",          "FVEC_REQ",
		"FVEC_REP",      "KEEPALIVE_REQ", "KEEPALIVE_REP", "EVENT_PROCESS",
		"EVENT_SERVICE", "EVENT_RPC",     "BE_IO_ERR",     "SNS_ERR",
	};
	return type < sizeof(names) / sizeof(names[0]) ? names[type] : "?";
}
