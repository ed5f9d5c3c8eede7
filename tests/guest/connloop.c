/* connloop: open and close N TCP connections to ADDR:PORT, one after the
 * other, and print how many succeeded. Built statically into the test
 * guest (busybox has no tool that does this without a process per
 * connection). Usage: connloop ADDR PORT N */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: connloop ADDR PORT N\n");
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "connloop: bad address %s\n", argv[1]);
        return 2;
    }
    long n = atol(argv[3]), ok = 0, failed = 0;
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { perror("socket"); return 1; }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) ok++; else failed++;
        close(fd);
    }
    printf("connloop: %ld connected, %ld failed\n", ok, failed);
    return failed ? 1 : 0;
}
