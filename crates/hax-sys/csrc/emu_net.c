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

void emu_conn_doom(hax_glue *h, struct emu_conn *c, const char *fmt, ...)
{
	if (c->doomed)
		return;
	c->doomed = true;
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
};

static void conn_free(hax_glue *h, struct emu_conn *c)
{
	if (c->doomed)
		emu_logf(h, HAX_LOG_WARN, "connection %llu (%s) dropped: %s",
			 (unsigned long long)c->id, c->peer, c->why);
	else
		emu_logf(h, HAX_LOG_DEBUG, "connection %llu (%s) closed",
			 (unsigned long long)c->id, c->peer);
	emu_on_conn_close(h, c);
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
	free(c->in);
	free(c);
}

static void conn_add(hax_glue *h, int fd)
{
	struct emu_conn *c = calloc(1, sizeof(*c));
	uint8_t *in = malloc(EMU_IN_CAP);
	if (c == NULL || in == NULL) {
		free(c);
		free(in);
		close(fd);
		emu_logf(h, HAX_LOG_ERROR, "connection refused: out of memory");
		return;
	}
	c->fd = fd;
	c->in = in;
	c->id = ++h->next_conn_id;
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
	emu_logf(h, HAX_LOG_DEBUG, "connection %llu (%s) accepted", (unsigned long long)c->id,
		 c->peer);
}

/* Parses every complete frame in c->in; called with h->mu held. */
static void conn_parse(hax_glue *h, struct emu_conn *c)
{
	size_t off = 0;
	while (!c->doomed && c->in_len - off >= 4) {
		uint32_t len = emu_get_u32(c->in + off);
		if (len == 0 || len > EMU_FRAME_MAX) {
			emu_conn_doom(h, c, "frame length %u out of 1..=%u", len, EMU_FRAME_MAX);
			break;
		}
		if (c->in_len - off - 4 < len)
			break;
		emu_on_frame(h, c, c->in[off + 4], c->in + off + 5, len - 1);
		off += 4 + (size_t)len;
	}
	if (c->doomed) {
		c->in_len = 0;
	} else if (off > 0) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
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

static void conn_read(struct netslot *s)
{
	struct emu_conn *c = s->c;
	for (;;) {
		ssize_t n = recv(c->fd, c->in + c->in_len, EMU_IN_CAP - c->in_len, 0);
		if (n > 0) {
			c->in_len += (size_t)n;
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
		for (size_t i = 2; pr > 0 && i < n; i++) {
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
		for (int i = 0; i < nnew; i++)
			conn_add(h, newfd[i]);
		for (size_t i = 2; i < n; i++) {
			struct netslot *s = &slot[i];
			if (s->got)
				conn_parse(h, s->c);
			if (s->io_err != 0)
				emu_conn_doom(h, s->c, "%s", strerror(s->io_err));
			else if (s->eof)
				emu_conn_doom(h, s->c, "closed by the peer");
		}
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
