/* The latency relay of relay.py, compiled: the same command line and the same behaviour, at a
 * small fraction of the Python relay's CPU. A real network's latency costs the client machine no
 * CPU; the Python relay spent about 6 CPU-seconds per 2,000-JPEG run on the same two cores as
 * the run it measures, so the benchmarks use this one where a C compiler is found.
 *
 *     cc -O2 -pthread -o relay benchmarks/relay.c
 *     ./relay --delay-ms 0.5 HOST PORT
 *
 * Two delay lines (stdin -> socket, socket -> stdout), each a reader thread that timestamps
 * what it reads and a writer thread that passes every chunk on at its time plus the delay. */

#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

struct chunk {
    struct timespec due;
    size_t len; /* 0: the end of the stream */
    struct chunk *next;
    char data[];
};

struct line {
    int in, out, out_is_socket;
    long delay_ns;
    pthread_mutex_t lock;
    pthread_cond_t ready;
    struct chunk *head, *tail;
    int done;
};

static pthread_mutex_t done_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t done_cond; /* on the monotonic clock, as the waits' limits */

static struct timespec later(long ns) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_nsec += ns % 1000000000L;
    t.tv_sec += ns / 1000000000L + t.tv_nsec / 1000000000L;
    t.tv_nsec %= 1000000000L;
    return t;
}

static void put(struct line *l, struct chunk *c) {
    c->due = later(l->delay_ns);
    c->next = NULL;
    pthread_mutex_lock(&l->lock);
    if (l->tail) l->tail->next = c; else l->head = c;
    l->tail = c;
    pthread_cond_signal(&l->ready);
    pthread_mutex_unlock(&l->lock);
}

static void *reader(void *arg) {
    struct line *l = arg;
    char *buf = malloc(CHUNK);
    while (buf) {
        ssize_t n = read(l->in, buf, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        struct chunk *c = malloc(sizeof *c + (size_t)n);
        if (!c) break;
        memcpy(c->data, buf, (size_t)n);
        c->len = (size_t)n;
        put(l, c);
    }
    free(buf);
    struct chunk *end = calloc(1, sizeof *end); /* the end, after what was read */
    if (end) put(l, end);
    return NULL;
}

/* Every chunk due by now, up to BATCH of them, taken off the queue at once (one write for all) */
#define BATCH 64

static int take_due(struct line *l, struct chunk **out) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int n = 0;
    pthread_mutex_lock(&l->lock);
    while (!l->head) pthread_cond_wait(&l->ready, &l->lock);
    out[n++] = l->head; /* the first is taken even if not yet due: the writer sleeps until it is */
    for (struct chunk *c = l->head->next; c && n < BATCH && c->len; c = c->next) {
        if (c->due.tv_sec > now.tv_sec || (c->due.tv_sec == now.tv_sec && c->due.tv_nsec > now.tv_nsec))
            break;
        out[n++] = c;
    }
    l->head = out[n - 1]->next;
    if (!l->head) l->tail = NULL;
    pthread_mutex_unlock(&l->lock);
    return n;
}

static int write_chunks(int fd, struct chunk **chunks, int n) {
    struct iovec iov[BATCH];
    int first = 0;
    for (int i = 0; i < n; i++) iov[i] = (struct iovec){chunks[i]->data, chunks[i]->len};
    while (first < n) {
        ssize_t done = writev(fd, iov + first, n - first);
        if (done < 0 && errno == EINTR) continue;
        if (done <= 0) return -1;
        while (first < n && (size_t)done >= iov[first].iov_len) done -= (ssize_t)iov[first++].iov_len;
        if (first < n) {
            iov[first].iov_base = (char *)iov[first].iov_base + done;
            iov[first].iov_len -= (size_t)done;
        }
    }
    return 0;
}

static void *writer(void *arg) {
    struct line *l = arg;
    struct chunk *chunks[BATCH];
    for (int end = 0; !end;) {
        int n = take_due(l, chunks);
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &chunks[0]->due, NULL) == EINTR) {}
        end = chunks[0]->len == 0; /* the end comes alone: it is never batched after data */
        if (!end && write_chunks(l->out, chunks, n) != 0) end = 1;
        for (int i = 0; i < n; i++) free(chunks[i]);
    }
    if (l->out_is_socket) shutdown(l->out, SHUT_WR); else close(l->out);
    pthread_mutex_lock(&done_lock);
    l->done = 1;
    pthread_cond_broadcast(&done_cond);
    pthread_mutex_unlock(&done_lock);
    return NULL;
}

static int connect_to(const char *host, const char *port) {
    struct addrinfo hints = {0}, *res, *ai;
    hints.ai_socktype = SOCK_STREAM;
    int err = getaddrinfo(host, port, &hints, &res);
    if (err) {
        fprintf(stderr, "relay: %s:%s: %s\n", host, port, gai_strerror(err));
        return -1;
    }
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        if (fd >= 0) close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "relay: cannot connect to %s:%s: %s\n", host, port, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void start(struct line *l, int in, int out, int out_is_socket, long delay_ns) {
    pthread_t t;
    l->in = in, l->out = out, l->out_is_socket = out_is_socket, l->delay_ns = delay_ns;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->ready, NULL);
    pthread_create(&t, NULL, reader, l);
    pthread_detach(t);
    pthread_create(&t, NULL, writer, l);
    pthread_detach(t);
}

int main(int argc, char **argv) {
    double delay_ms = 0.5;
    int i = 1;
    if (argc > 2 && strcmp(argv[1], "--delay-ms") == 0) {
        char *end;
        delay_ms = strtod(argv[2], &end);
        if (*end || delay_ms < 0) {
            fprintf(stderr, "relay: --delay-ms: not a number of milliseconds: %s\n", argv[2]);
            return 2;
        }
        i = 3;
    }
    if (argc - i != 2) {
        fprintf(stderr, "usage: relay [--delay-ms MS] HOST PORT\n");
        return 2;
    }
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&done_cond, &attr);
    signal(SIGPIPE, SIG_IGN); /* a closed side is a failed write, which ends its line */
    int sock = connect_to(argv[i], argv[i + 1]);
    if (sock < 0) return 1;
    long delay_ns = (long)(delay_ms * 1e6);
    static struct line up, down;
    start(&up, 0, sock, 1, delay_ns);
    start(&down, sock, 1, 0, delay_ns);
    /* the server closing ends the relay (what it sent is passed on first); ssh closing its side
     * is passed on to the server, which then closes */
    pthread_mutex_lock(&done_lock);
    while (!down.done) pthread_cond_wait(&done_cond, &done_lock);
    struct timespec limit = later(delay_ns + 1000000000L);
    while (!up.done) {
        if (pthread_cond_timedwait(&done_cond, &done_lock, &limit) == ETIMEDOUT) break;
    }
    pthread_mutex_unlock(&done_lock);
    close(sock);
    return 0;
}
