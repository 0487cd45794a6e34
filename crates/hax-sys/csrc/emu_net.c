/*
 * emu_net.c - the emulator's endpoints and its network thread.
 *
 * The network thread owns every connection: it accepts, reads, writes and
 * frees them. Other threads only append frames to conn->out under h->mu and
 * kick the thread through an eventfd. Output is double-buffered (out/wr) so
 * that send() runs without the lock while other threads keep appending.
 */
#include "emu.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* --- endpoints ---------------------------------------------------------- */

/* Parses a decimal number of at most 9 digits ending at a delimiter. */
static const char *parse_dec(const char *s, long *out)
{
	long v = 0;
	int n = 0;
	while (isdigit((unsigned char)s[n])) {
		if (n == 9)
			return NULL;
		v = v * 10 + (s[n] - '0');
		n++;
	}
	if (n == 0)
		return NULL;
	*out = v;
	return s + n;
}

static int set_inet(struct emu_ep *ep, const char *host, long port)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)&ep->sa;
	if (port <= 0 || port > 65535)
		return HAX_E_INVAL;
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &sin->sin_addr) != 1) {
		struct addrinfo hints = {0};
		struct addrinfo *ai = NULL;
		hints.ai_family = AF_INET;
		hints.ai_socktype = SOCK_STREAM;
		if (getaddrinfo(host, NULL, &hints, &ai) != 0 || ai == NULL)
			return HAX_E_INVAL;
		sin->sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
		freeaddrinfo(ai);
	}
	ep->family = AF_INET;
	ep->salen = sizeof(*sin);
	return 0;
}

/*
 * LNet style, "<ipv4>@tcp:12345:<portal>:<tmid>" or "0@lo:12345:...": Motr's
 * IP transports listen on port tmid | 1<<10 | (portal' - 30)<<11 where
 * portal' = portal < 30 ? portal + 30 : portal (net/ip.c).
 */
static int parse_lnet(const char *s, struct emu_ep *ep)
{
	char node[64];
	const char *rest;
	if (strncmp(s, "0@lo:", 5) == 0) {
		strcpy(node, "127.0.0.1");
		rest = s + 5;
	} else {
		const char *at = strchr(s, '@');
		if (at == NULL || (size_t)(at - s) >= sizeof(node) || strncmp(at, "@tcp:", 5) != 0)
			return HAX_E_INVAL;
		memcpy(node, s, (size_t)(at - s));
		node[at - s] = '\0';
		struct in_addr a;
		if (inet_pton(AF_INET, node, &a) != 1)
			return HAX_E_INVAL;
		rest = at + 5;
	}
	long pid, portal, tmid;
	rest = parse_dec(rest, &pid);
	if (rest == NULL || *rest++ != ':' || pid != 12345)
		return HAX_E_INVAL;
	rest = parse_dec(rest, &portal);
	if (rest == NULL || *rest++ != ':')
		return HAX_E_INVAL;
	rest = parse_dec(rest, &tmid);
	if (rest == NULL || *rest != '\0')
		return HAX_E_INVAL;
	if (portal < 30)
		portal += 30;
	long port = tmid | 1L << 10 | (portal - 30) << 11;
	if (port > 65535)
		return HAX_E_INVAL;
	return set_inet(ep, node, port);
}

int emu_ep_parse(const char *s, struct emu_ep *ep)
{
	memset(ep, 0, sizeof(*ep));
	if (s == NULL)
		return HAX_E_INVAL;
	size_t len = strlen(s);
	if (len == 0 || len > EMU_STR_MAX || !emu_utf8_ok((const uint8_t *)s, len))
		return HAX_E_INVAL;
	if (strncmp(s, "unix:", 5) == 0) {
		const char *path = s + 5;
		struct sockaddr_un *sun = (struct sockaddr_un *)&ep->sa;
		size_t n = strlen(path);
		if (n == 0 || n >= sizeof(sun->sun_path))
			return HAX_E_INVAL;
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, path, n + 1);
		memcpy(ep->path, path, n + 1);
		ep->family = AF_UNIX;
		ep->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
		return 0;
	}
	/* "inet:stream:" is the form of Motr's SOCK transport (which refuses
	 * "inet:tcp:"); the emulator takes both. */
	size_t pre = strncmp(s, "inet:tcp:", 9) == 0 ? 9 : strncmp(s, "inet:stream:", 12) == 0 ? 12 : 0;
	if (pre > 0) {
		const char *host = s + pre;
		const char *at = strrchr(host, '@');
		char name[EMU_STR_MAX + 1];
		long port;
		if (at == NULL || at == host)
			return HAX_E_INVAL;
		const char *end = parse_dec(at + 1, &port);
		if (end == NULL || *end != '\0')
			return HAX_E_INVAL;
		memcpy(name, host, (size_t)(at - host));
		name[at - host] = '\0';
		return set_inet(ep, name, port);
	}
	if (isdigit((unsigned char)s[0]))
		return parse_lnet(s, ep);
	return HAX_E_INVAL;
}

int emu_ep_canonical(char *s, size_t size)
{
	bool lnet = isdigit((unsigned char)s[0]);
	if (!lnet && strncmp(s, "inet:stream:", 12) != 0)
		return 0;
	const char *at = strrchr(s, '@');
	char host[INET_ADDRSTRLEN];
	size_t n = at != NULL ? (size_t)(at - s) - (lnet ? 0 : 12) : 0;
	struct in_addr a;
	/* Numeric addresses only: no name is looked up here. */
	if (at == NULL || (!lnet && n >= sizeof(host)))
		return 0;
	if (!lnet) {
		memcpy(host, s + 12, n);
		host[n] = '\0';
		if (inet_pton(AF_INET, host, &a) != 1)
			return 0;
	}
	struct emu_ep ep;
	if (emu_ep_parse(s, &ep) != 0 || ep.family != AF_INET)
		return 0;
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&ep.sa;
	if (inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host)) == NULL)
		return 0;
	int w = snprintf(s, size, "inet:tcp:%s@%u", host, (unsigned)ntohs(sin->sin_port));
	return w > 0 && (size_t)w < size ? 1 : 0;
}

int emu_listen(const struct emu_ep *ep, int *fd_out)
{
	int fd = socket(ep->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (ep->family == AF_INET) {
		int one = 1;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	} else {
		/* A socket file left by an earlier run is replaced; anything
		 * else at that path is not ours to remove. */
		struct stat st;
		if (lstat(ep->path, &st) == 0 && S_ISSOCK(st.st_mode))
			(void)unlink(ep->path);
	}
	if (bind(fd, (const struct sockaddr *)&ep->sa, ep->salen) != 0 || listen(fd, 512) != 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	*fd_out = fd;
	return 0;
}

/* --- connection output -------------------------------------------------- */

void emu_kick_net(hax_glue *h)
{
	if (h->net_kicked)
		return;
	h->net_kicked = true;
	if (!h->threads_up)
		return;
	pthread_t me = pthread_self();
	/* The network thread re-reads every buffer before it polls again. */
	if (pthread_equal(me, h->net_tid))
		return;
	/* The handler thread kicks once per batch of callbacks. */
	if (pthread_equal(me, h->handler_tid)) {
		h->kick_deferred = true;
		return;
	}
	uint64_t one = 1;
	ssize_t r = write(h->wake_fd, &one, sizeof(one));
	(void)r; /* EAGAIN: the counter is already non-zero, a wakeup is pending */
}

static void pending_unlink(hax_glue *h, struct emu_conn *c);

void emu_conn_doom(hax_glue *h, struct emu_conn *c, const char *fmt, ...)
{
	if (c->doomed)
		return;
	c->doomed = true;
	/* It no longer waits for its HELLO: the bounds count the live ones. */
	pending_unlink(h, c);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->why, sizeof(c->why), fmt, ap);
	va_end(ap);
	emu_buf_free(&c->out);
	emu_kick_net(h);
}

uint8_t *emu_conn_frame(hax_glue *h, struct emu_conn *c, uint8_t type, size_t body_len)
{
	if (c->doomed)
		return NULL;
	size_t need = 5 + body_len;
	if (c->out.len + c->wr_pending + need > EMU_OUT_LIMIT) {
		emu_conn_doom(h, c, "peer does not read: over %u bytes of output unsent",
			      EMU_OUT_LIMIT);
		return NULL;
	}
	if (emu_buf_reserve(&c->out, need) != 0) {
		emu_conn_doom(h, c, "out of memory for output");
		return NULL;
	}
	uint8_t *p = c->out.p + c->out.len;
	emu_put_u32(p, (uint32_t)(body_len + 1));
	p[4] = type;
	c->out.len += need;
	emu_kick_net(h);
	return p + 5;
}

/* --- the network thread ------------------------------------------------- */

struct netslot {
	struct emu_conn *c;
	int io_err;  /* errno of a failed read or write, 0 if none */
	bool eof;    /* the peer closed its side */
	bool got;    /* new input to parse */
	bool more;   /* output waits behind the write buffer */
	uint64_t now;
};

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/*
 * Descriptors kept out of the emulator's reach: half of the limit, for the
 * rest of the process (hax's HTTP server and its Consul connections above
 * all), so that peers flooding the endpoint never starve them.
 */
void emu_conn_limits(hax_glue *h)
{
	uint32_t cap = h->max_conns_opt;
	struct rlimit rl;
	bool by_fds = false;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		rlim_t half = rl.rlim_cur / 2;
		if (half < 1)
			half = 1;
		if (half < cap) {
			cap = (uint32_t)half;
			by_fds = true;
		}
	}
	h->max_conns = cap;
	h->max_pending = h->max_pending_opt < cap ? h->max_pending_opt : cap;
	emu_logf(h, by_fds ? HAX_LOG_INFO : HAX_LOG_DEBUG,
		 "peer connections: at most %u (%u without HELLO)%s; HELLO within %u ms, a "
		 "frame within %u ms (0: no limit)",
		 h->max_conns, h->max_pending,
		 by_fds ? ", half of the descriptor limit" : "", h->hello_timeout_ms,
		 h->frame_timeout_ms);
}

static void pending_unlink(hax_glue *h, struct emu_conn *c)
{
	if (!c->pending)
		return;
	if (c->pprev != NULL)
		c->pprev->pnext = c->pnext;
	else
		h->pending_head = c->pnext;
	if (c->pnext != NULL)
		c->pnext->pprev = c->pprev;
	else
		h->pending_tail = c->pprev;
	c->pnext = c->pprev = NULL;
	c->pending = false;
	h->n_pending--;
}

void emu_conn_hello(hax_glue *h, struct emu_conn *c)
{
	c->hello = true;
	pending_unlink(h, c);
}

/* Sheds a connection for a bound (not for a fault of the protocol): one
 * debug line each, and a summary now and then (shed_report). */
static void conn_shed(hax_glue *h, struct emu_conn *c, uint64_t *counter, const char *why)
{
	if (c->doomed)
		return;
	(*counter)++;
	emu_conn_doom(h, c, "%s", why);
	c->quiet = true;
}

#define SHED_REPORT_MS 10000u

/* At most one warning every SHED_REPORT_MS; returns when the next is due
 * (0: nothing to report). */
static uint64_t shed_report(hax_glue *h, uint64_t now)
{
	uint64_t n = h->shed_hello + h->shed_frame + h->shed_pending + h->shed_refused;
	if (n == 0)
		return 0;
	if (h->shed_report_ms != 0 && now < h->shed_report_ms + SHED_REPORT_MS)
		return h->shed_report_ms + SHED_REPORT_MS;
	char msg[400] = "";
	size_t at = 0;
#define PART(n, ...)                                                                               \
	do {                                                                                       \
		if ((n) != 0 && at < sizeof(msg))                                                  \
			at += (size_t)snprintf(msg + at, sizeof(msg) - at, __VA_ARGS__);           \
	} while (0)
	PART(h->shed_hello, "; %llu without HELLO within %u ms",
	     (unsigned long long)h->shed_hello, h->hello_timeout_ms);
	PART(h->shed_frame, "; %llu with a frame unfinished after %u ms",
	     (unsigned long long)h->shed_frame, h->frame_timeout_ms);
	PART(h->shed_pending, "; %llu without HELLO, the oldest, to make room (at most %u)",
	     (unsigned long long)h->shed_pending, h->max_pending);
	PART(h->shed_refused, "; %llu refused (at most %u connections)",
	     (unsigned long long)h->shed_refused, h->max_conns);
#undef PART
	emu_logf(h, HAX_LOG_WARN, "peer connections closed by their bounds%s; %zu open", msg,
		 h->n_conns);
	h->shed_hello = h->shed_frame = h->shed_pending = h->shed_refused = 0;
	h->shed_report_ms = now;
	return 0;
}

/*
 * Input buffers: up to EMU_IN_KEEP from malloc, larger ones pages of their
 * own (mmap), unmapped when freed. What a flood of partial frames took then
 * goes back to the system as its connections close, whatever the allocator
 * made of earlier frees (glibc serves blocks of this size from its heap once
 * it has seen one freed, and kept 160 MiB of 2,000 partial frames there).
 */
static int in_grow(struct emu_buf *b, size_t need)
{
	if (need <= b->cap)
		return 0;
	size_t ncap = b->cap * 2 > need ? b->cap * 2 : need;
	ncap = ncap > EMU_IN_CAP ? EMU_IN_CAP : ncap;
	if (ncap <= EMU_IN_KEEP) {
		uint8_t *p = realloc(b->p, EMU_IN_KEEP);
		if (p == NULL)
			return -1;
		b->p = p;
		b->cap = EMU_IN_KEEP;
		return 0;
	}
	ncap = (ncap + 4095u) & ~(size_t)4095u;
	void *p;
	if (b->cap > EMU_IN_KEEP) {
		p = mremap(b->p, b->cap, ncap, MREMAP_MAYMOVE);
	} else {
		p = mmap(NULL, ncap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED && b->len > 0)
			memcpy(p, b->p, b->len);
		if (p != MAP_FAILED)
			free(b->p);
	}
	if (p == MAP_FAILED)
		return -1;
	b->p = p;
	b->cap = ncap;
	return 0;
}

static void in_free(struct emu_buf *b)
{
	if (b->cap > EMU_IN_KEEP)
		(void)munmap(b->p, b->cap);
	else
		free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

static void conn_free(hax_glue *h, struct emu_conn *c)
{
	if (c->doomed)
		emu_logf(h, c->quiet ? HAX_LOG_DEBUG : HAX_LOG_WARN,
			 "connection %llu (%s) dropped: %s", (unsigned long long)c->id, c->peer,
			 c->why);
	else
		emu_logf(h, HAX_LOG_DEBUG, "connection %llu (%s) closed",
			 (unsigned long long)c->id, c->peer);
	emu_on_conn_close(h, c);
	pending_unlink(h, c);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	h->n_conns--;
	close(c->fd);
	emu_buf_free(&c->out);
	emu_buf_free(&c->wr);
	in_free(&c->in);
	free(c);
}

/*
 * Makes room for a new connection, as a server under a connection flood
 * does: a connection that has not said HELLO yet is the one to go, the oldest
 * first (a well-behaved peer sends HELLO as it connects, so the newest is the
 * likeliest to be one); peers past HELLO are never closed for a newcomer.
 * false when there is no room: the newcomer is refused.
 */
static bool conn_room(hax_glue *h, uint64_t now)
{
	/* Doomed connections count until they are freed: they still hold
	 * their descriptors. */
	if (h->n_pending < h->max_pending && h->n_conns < h->max_conns)
		return true;
	struct emu_conn *old = h->pending_head;
	if (old == NULL)
		return false;
	char why[96];
	snprintf(why, sizeof(why), "closed without HELLO after %llu ms to make room",
		 (unsigned long long)(now - old->accepted_ms));
	conn_shed(h, old, &h->shed_pending, why);
	return true;
}

static void conn_add(hax_glue *h, int fd, uint64_t now)
{
	if (!conn_room(h, now)) {
		h->shed_refused++;
		close(fd);
		return;
	}
	struct emu_conn *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		emu_logf(h, HAX_LOG_ERROR, "connection refused: out of memory");
		return;
	}
	c->fd = fd;
	c->id = ++h->next_conn_id;
	c->accepted_ms = now;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (h->ep.family == AF_INET) {
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)&ss;
		char ip[INET_ADDRSTRLEN];
		inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof(ip));
		snprintf(c->peer, sizeof(c->peer), "%s:%u", ip, ntohs(sin->sin_port));
	} else {
		snprintf(c->peer, sizeof(c->peer), "unix");
	}
	c->next = h->conns;
	if (h->conns != NULL)
		h->conns->prev = c;
	h->conns = c;
	h->n_conns++;
	c->pending = true;
	c->pprev = h->pending_tail;
	if (h->pending_tail != NULL)
		h->pending_tail->pnext = c;
	else
		h->pending_head = c;
	h->pending_tail = c;
	h->n_pending++;
	emu_logf(h, HAX_LOG_DEBUG, "connection %llu (%s) accepted", (unsigned long long)c->id,
		 c->peer);
}

/* Parses every complete frame in c->in; called with h->mu held. */
static void conn_parse(hax_glue *h, struct emu_conn *c, uint64_t now)
{
	size_t off = 0;
	uint8_t *in = c->in.p;
	while (!c->doomed && c->in.len - off >= 4) {
		uint32_t len = emu_get_u32(in + off);
		if (len == 0 || len > EMU_FRAME_MAX) {
			emu_conn_doom(h, c, "frame length %u out of 1..=%u", len, EMU_FRAME_MAX);
			break;
		}
		/* The first frame must be a HELLO: anything longer is refused
		 * before it is read, so a connection holds no memory before it. */
		if (!c->hello && len != 9) {
			emu_conn_doom(h, c, "frame of %u bytes before HELLO (a HELLO has 9)", len);
			break;
		}
		if (c->in.len - off - 4 < len)
			break;
		emu_on_frame(h, c, in[off + 4], in + off + 5, len - 1);
		off += 4 + (size_t)len;
	}
	if (c->doomed) {
		c->in.len = 0;
	} else if (off > 0) {
		memmove(in, in + off, c->in.len - off);
		c->in.len -= off;
		c->frame_ms = now; /* the leftover, if any, is a new frame */
	}
	if (c->in.len == 0 && c->in.cap > EMU_IN_KEEP)
		in_free(&c->in);
}

/* Closes connections past their deadlines; returns the next deadline
 * (0: none). Called with h->mu held. */
static uint64_t conn_deadlines(hax_glue *h, uint64_t now)
{
	uint64_t next = 0;
#define NEXT(t)                                                                                    \
	do {                                                                                       \
		if (next == 0 || (t) < next)                                                       \
			next = (t);                                                                \
	} while (0)
	if (h->hello_timeout_ms != 0) {
		/* The pending list is in order of acceptance. */
		for (struct emu_conn *c = h->pending_head, *nx; c != NULL; c = nx) {
			nx = c->pnext;
			uint64_t due = c->accepted_ms + h->hello_timeout_ms;
			if (due > now) {
				NEXT(due);
				break;
			}
			char why[64];
			snprintf(why, sizeof(why), "no HELLO within %u ms", h->hello_timeout_ms);
			conn_shed(h, c, &h->shed_hello, why);
		}
	}
	if (h->frame_timeout_ms != 0) {
		for (struct emu_conn *c = h->conns; c != NULL; c = c->next) {
			if (c->doomed || c->in.len == 0)
				continue;
			uint64_t due = c->frame_ms + h->frame_timeout_ms;
			if (due > now) {
				NEXT(due);
				continue;
			}
			char why[96];
			snprintf(why, sizeof(why), "frame unfinished after %u ms (%zu bytes of it came)",
				 h->frame_timeout_ms, c->in.len);
			conn_shed(h, c, &h->shed_frame, why);
		}
	}
	uint64_t report = shed_report(h, now);
	if (report != 0)
		NEXT(report);
#undef NEXT
	return next;
}

/* Writes c->wr without the lock; returns false on a fatal error. */
static bool conn_write(struct netslot *s)
{
	struct emu_conn *c = s->c;
	while (c->wr_off < c->wr.len) {
		ssize_t n = send(c->fd, c->wr.p + c->wr_off, c->wr.len - c->wr_off, MSG_NOSIGNAL);
		if (n > 0) {
			c->wr_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return true;
		s->io_err = n < 0 ? errno : EPIPE;
		return false;
	}
	c->wr.len = 0;
	c->wr_off = 0;
	return true;
}

/*
 * Reads what the socket holds, at most up to EMU_IN_CAP buffered: the buffer
 * grows with what arrived (FIONREAD), never to a frame's announced length.
 */
static void conn_read(struct netslot *s)
{
	struct emu_conn *c = s->c;
	for (;;) {
		size_t room = EMU_IN_CAP - c->in.len;
		int avail = 0;
		if (room == 0)
			return;
		/* 0 (or unknown) still reads: an end of stream, or data that
		 * came after the question. */
		if (ioctl(c->fd, FIONREAD, &avail) != 0 || avail <= 0)
			avail = 512;
		size_t want = (size_t)avail < room ? (size_t)avail : room;
		if (in_grow(&c->in, c->in.len + want) != 0) {
			s->io_err = ENOMEM;
			return;
		}
		ssize_t n = recv(c->fd, c->in.p + c->in.len, want, 0);
		if (n > 0) {
			if (c->in.len == 0)
				c->frame_ms = s->now;
			c->in.len += (size_t)n;
			s->got = true;
			return;
		}
		if (n == 0) {
			s->eof = true;
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			s->io_err = errno;
		return;
	}
}

/* Moves queued output to the write buffer when that one is drained. */
static void conn_swap(struct emu_conn *c)
{
	if (c->wr_off == c->wr.len && c->out.len > 0) {
		struct emu_buf t = c->wr;
		c->wr = c->out;
		c->out = t;
		c->out.len = 0;
		c->wr_off = 0;
	}
	c->wr_pending = c->wr.len - c->wr_off;
}

static void final_flush(hax_glue *h)
{
	/* Last frames (NOLINK above all) get one non-blocking chance. */
	for (struct emu_conn *c = h->conns; c != NULL; c = c->next) {
		if (c->doomed)
			continue;
		for (int i = 0; i < 2; i++) {
			conn_swap(c);
			struct netslot s = {.c = c};
			if (!conn_write(&s) || c->wr_off != c->wr.len)
				break;
		}
	}
	while (h->conns != NULL)
		conn_free(h, h->conns);
}

void *emu_net_main(void *arg)
{
	hax_glue *h = arg;
	struct pollfd *pfd = NULL;
	struct netslot *slot = NULL;
	size_t cap = 0;
	/* After EMFILE and the like, accepting pauses instead of spinning. */
	struct timespec pause_end = {0, 0};
	bool paused = false;
	int accept_err = 0;
	uint64_t deadline = 0; /* the next bound to check (conn_deadlines), 0: none */

	cap = 64;
	pfd = malloc(cap * sizeof(*pfd));
	slot = malloc(cap * sizeof(*slot));
	pthread_mutex_lock(&h->mu);
	if (pfd == NULL || slot == NULL) {
		emu_logf(h, HAX_LOG_ERROR, "network thread: out of memory, no peer is served");
		while (!h->quit_net) {
			emu_unlock(h);
			struct pollfd w = {.fd = h->wake_fd, .events = POLLIN};
			uint64_t v;
			if (poll(&w, 1, -1) > 0 && read(h->wake_fd, &v, sizeof(v)) < 0)
				v = 0;
			pthread_mutex_lock(&h->mu);
		}
	}
	for (;;) {
		for (struct emu_conn *c = h->conns, *n; c != NULL; c = n) {
			n = c->next;
			if (c->doomed)
				conn_free(h, c);
		}
		if (h->quit_net)
			break;
		size_t want = 2 + h->n_conns;
		if (want > cap) {
			size_t ncap = want * 2;
			struct pollfd *np = realloc(pfd, ncap * sizeof(*np));
			if (np != NULL)
				pfd = np;
			struct netslot *ns = realloc(slot, ncap * sizeof(*ns));
			if (ns != NULL)
				slot = ns;
			if (np == NULL || ns == NULL) {
				/* Keep serving the connections that fit. */
				emu_logf(h, HAX_LOG_ERROR, "network thread: out of memory");
			} else {
				cap = ncap;
			}
		}
		size_t n = 2;
		pfd[0] = (struct pollfd){.fd = h->wake_fd, .events = POLLIN};
		int timeout = -1;
		if (paused) {
			struct timespec now;
			clock_gettime(CLOCK_MONOTONIC, &now);
			long ms = (pause_end.tv_sec - now.tv_sec) * 1000 +
				  (pause_end.tv_nsec - now.tv_nsec) / 1000000;
			if (ms <= 0)
				paused = false;
			else
				timeout = (int)ms;
		}
		if (deadline != 0) {
			uint64_t now = now_ms();
			uint64_t ms = deadline > now ? deadline - now : 0;
			if (timeout < 0 || ms < (uint64_t)timeout)
				timeout = (int)(ms > 3600000u ? 3600000u : ms);
		}
		pfd[1] = (struct pollfd){.fd = paused ? -1 : h->listen_fd, .events = POLLIN};
		for (struct emu_conn *c = h->conns; c != NULL && n < cap; c = c->next) {
			conn_swap(c);
			if (c->starved && c->out.len + c->wr_pending < EMU_PUMP_LOW) {
				emu_pump_conn(h, c);
				conn_swap(c);
			}
			slot[n] = (struct netslot){.c = c, .more = c->out.len > 0 || c->starved};
			pfd[n] = (struct pollfd){.fd = c->fd, .events = POLLIN};
			n++;
		}
		h->net_kicked = false;
		emu_unlock(h);

		for (size_t i = 2; i < n; i++) {
			struct emu_conn *c = slot[i].c;
			if (c->wr_off < c->wr.len && conn_write(&slot[i])) {
				if (c->wr_off < c->wr.len)
					pfd[i].events |= POLLOUT;
				else if (slot[i].more)
					timeout = 0; /* refill at once, nothing would wake us */
			}
		}
		int pr = poll(pfd, n, timeout);
		if (pr > 0 && (pfd[0].revents & POLLIN)) {
			uint64_t v;
			ssize_t r = read(h->wake_fd, &v, sizeof(v));
			(void)r;
		}
		uint64_t now = now_ms();
		for (size_t i = 2; pr > 0 && i < n; i++) {
			slot[i].now = now;
			short re = pfd[i].revents;
			if (re & (POLLIN | POLLHUP | POLLERR))
				conn_read(&slot[i]);
			if ((re & POLLOUT) && slot[i].io_err == 0)
				conn_write(&slot[i]);
		}
		int newfd[64];
		int nnew = 0;
		if (pr > 0 && (pfd[1].revents & POLLIN)) {
			while (nnew < 64) {
				int fd = accept4(h->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd >= 0) {
					newfd[nnew++] = fd;
					continue;
				}
				if (errno == EINTR || errno == ECONNABORTED)
					continue;
				if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
				    errno == ENOMEM) {
					accept_err = errno;
					paused = true;
					clock_gettime(CLOCK_MONOTONIC, &pause_end);
					pause_end.tv_nsec += 100 * 1000000L;
					if (pause_end.tv_nsec >= 1000000000L) {
						pause_end.tv_sec++;
						pause_end.tv_nsec -= 1000000000L;
					}
				}
				break;
			}
		}

		pthread_mutex_lock(&h->mu);
		if (accept_err != 0) {
			emu_logf(h, HAX_LOG_ERROR, "accept: %s; not accepting for 100 ms",
				 strerror(accept_err));
			accept_err = 0;
		}
		for (size_t i = 2; i < n; i++) {
			struct netslot *s = &slot[i];
			if (s->got)
				conn_parse(h, s->c, now);
			if (s->io_err != 0)
				emu_conn_doom(h, s->c, "%s", strerror(s->io_err));
			else if (s->eof)
				emu_conn_doom(h, s->c, "closed by the peer");
		}
		/* After the input, so that a deadline never closes a connection
		 * whose bytes were already here. */
		for (int i = 0; i < nnew; i++)
			conn_add(h, newfd[i], now);
		deadline = conn_deadlines(h, now);
	}
	final_flush(h);
	emu_unlock(h);
	free(pfd);
	free(slot);
	return NULL;
}

void emu_net_free_all(hax_glue *h)
{
	while (h->conns != NULL)
		conn_free(h, h->conns);
}
