/* Drives Debian's real libslirp for tests/state.rs: migration state
 * written by real libslirp, and ours read back by it.
 *
 *   state_helper save FRAMES OUT   feed FRAMES (u32 LE length + bytes each)
 *                                  through slirp_input, then save to OUT
 *   state_helper reload IN OUT     load IN (version 4), print the result,
 *                                  then save to OUT
 */
#include <slirp/libslirp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static ssize_t send_packet(const void *buf, size_t len, void *opaque)
{
    (void)buf; (void)opaque;
    return (ssize_t)len;
}
static void guest_error(const char *msg, void *opaque)
{
    (void)opaque;
    fprintf(stderr, "guest_error: %s\n", msg);
}
static int64_t clock_get_ns(void *opaque)
{
    struct timespec t;
    (void)opaque;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}
static void *timer_new(SlirpTimerCb cb, void *cb_opaque, void *opaque)
{
    (void)cb; (void)cb_opaque; (void)opaque;
    return malloc(1);
}
static void *timer_new_opaque(SlirpTimerId id, void *cb_opaque, void *opaque)
{
    (void)id; (void)cb_opaque; (void)opaque;
    return malloc(1);
}
static void timer_free(void *timer, void *opaque) { (void)opaque; free(timer); }
static void timer_mod(void *timer, int64_t when, void *opaque)
{
    (void)timer; (void)when; (void)opaque;
}
static void poll_fd(int fd, void *opaque) { (void)fd; (void)opaque; }
static void notify(void *opaque) { (void)opaque; }

static ssize_t write_file(const void *buf, size_t len, void *opaque)
{
    return (ssize_t)fwrite(buf, 1, len, opaque);
}
static ssize_t read_file(void *buf, size_t len, void *opaque)
{
    return (ssize_t)fread(buf, 1, len, opaque);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s save FRAMES OUT | reload IN OUT\n", argv[0]);
        return 2;
    }
    SlirpConfig cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.version = 4;
    cfg.in_enabled = true;
    inet_pton(AF_INET, "10.0.2.0", &cfg.vnetwork);
    inet_pton(AF_INET, "255.255.255.0", &cfg.vnetmask);
    inet_pton(AF_INET, "10.0.2.2", &cfg.vhost);
    inet_pton(AF_INET, "10.0.2.15", &cfg.vdhcp_start);
    inet_pton(AF_INET, "10.0.2.3", &cfg.vnameserver);
    SlirpCb cb = {
        .send_packet = send_packet,
        .guest_error = guest_error,
        .clock_get_ns = clock_get_ns,
        .timer_new = timer_new,
        .timer_free = timer_free,
        .timer_mod = timer_mod,
        .register_poll_fd = poll_fd,
        .unregister_poll_fd = poll_fd,
        .notify = notify,
        .timer_new_opaque = timer_new_opaque,
    };
    Slirp *s = slirp_new(&cfg, &cb, NULL);
    if (!s) {
        return 1;
    }
    FILE *in = fopen(argv[2], "rb");
    FILE *out = fopen(argv[3], "wb");
    if (!in || !out) {
        return 1;
    }
    if (strcmp(argv[1], "save") == 0) {
        uint8_t len[4];
        static uint8_t frame[65536];
        while (fread(len, 1, 4, in) == 4) {
            uint32_t n = len[0] | len[1] << 8 | len[2] << 16 | (uint32_t)len[3] << 24;
            if (n > sizeof(frame) || fread(frame, 1, n, in) != n) {
                return 1;
            }
            slirp_input(s, frame, (int)n);
        }
    } else {
        printf("load=%d\n", slirp_state_load(s, slirp_state_version(), read_file, in));
    }
    slirp_state_save(s, write_file, out);
    fclose(out);
    slirp_cleanup(s);
    return 0;
}
