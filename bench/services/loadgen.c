/* bench/services load generator, compiled at bench time with the system cc (python -m bench.services
 * --client c). The Python client cost ~200 us per connection of its own, which hid the difference
 * between the paths it measured; this one costs a few us, so the ratio is the kernel path's.
 *
 *   loadgen server IP PORT... : per port, THREADS threads accept → recv 16 bytes → echo → close
 *   loadgen client IP PORT N WARM PROCS : PROCS processes, N connections in all (after WARM each):
 *                                 connect, send 16 bytes, read them back, close with SO_LINGER 0;
 *                                 prints {"secs": wall time of the measured part, "lat": [seconds per
 *                                 connection], "errors": n} like the Python client
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define THREADS 4
static const char MSG[16] = "0123456789abcdef";

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static void *serve(void *arg)
{
	int ls = (int)(long)arg;
	char buf[64];
	for (;;) {
		int c = accept(ls, NULL, NULL);
		if (c < 0)
			continue;
		ssize_t n = recv(c, buf, sizeof buf, 0);
		if (n > 0)
			send(c, buf, (size_t)n, MSG_NOSIGNAL);
		close(c);
	}
	return NULL;
}

static int server(int argc, char **argv)
{
	pthread_t t;
	for (int i = 3; i < argc; i++) {
		int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[i]))};
		inet_pton(AF_INET, argv[2], &a.sin_addr);
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) {
			perror("bind/listen");
			return 1;
		}
		for (int k = 0; k < THREADS; k++)
			pthread_create(&t, NULL, serve, (void *)(long)ls);
	}
	printf("ready\n");
	fflush(stdout);
	pause();
	return 0;
}

static int one_conn(const struct sockaddr_in *a)
{
	struct linger lin = {1, 0};
	struct timeval tv = {2, 0};
	char got[16];
	size_t have = 0;
	int s = socket(AF_INET, SOCK_STREAM, 0), ok = 0;
	setsockopt(s, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	if (connect(s, (const struct sockaddr *)a, sizeof *a) == 0 && send(s, MSG, 16, MSG_NOSIGNAL) == 16) {
		while (have < 16) {
			ssize_t n = recv(s, got + have, 16 - have, 0);
			if (n <= 0)
				break;
			have += (size_t)n;
		}
		ok = have == 16 && memcmp(got, MSG, 16) == 0;
	}
	close(s);
	return ok;
}

static int client(char **argv)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
	inet_pton(AF_INET, argv[2], &a.sin_addr);
	long n = atol(argv[4]), warm = atol(argv[5]), procs = atol(argv[6]);
	if (procs < 1)
		procs = 1;
	/* shared with the children: one latency slot per connection (< 0 = failed), start/end stamps */
	double *lat = mmap(NULL, sizeof(double) * (size_t)(n + 2), PROT_READ | PROT_WRITE,
			   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	volatile long *go = mmap(NULL, sizeof(long) * 2, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (long p = 0; p < procs; p++) {
		if (fork() == 0) {
			for (long i = 0; i < warm; i++)
				one_conn(&a);
			__sync_fetch_and_add(&go[0], 1);
			while (go[0] < procs)
				; /* every worker warm: start together */
			for (long i = p; i < n; i += procs) {
				double t = now();
				lat[i] = one_conn(&a) ? now() - t : -1;
			}
			_exit(0);
		}
	}
	while (go[0] < procs)
		usleep(100);
	double t0 = now();
	while (wait(NULL) > 0)
		;
	double secs = now() - t0;
	long errors = 0;
	printf("{\"secs\": %.9f, \"lat\": [", secs);
	int first = 1;
	for (long i = 0; i < n; i++) {
		if (lat[i] < 0) {
			errors++;
			continue;
		}
		printf(first ? "%.9f" : ", %.9f", lat[i]);
		first = 0;
	}
	printf("], \"errors\": %ld}\n", errors);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "server"))
		return server(argc, argv);
	if (argc == 7 && !strcmp(argv[1], "client"))
		return client(argv);
	fprintf(stderr, "usage: loadgen server IP PORT... | loadgen client IP PORT N WARM PROCS\n");
	return 2;
}
