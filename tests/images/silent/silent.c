/*
 * silent: a deliberately broken guest for summoner's tests.  It boots to
 * userspace like a real image but never opens a socket, so the readiness
 * probe can never succeed; summoner must give up at the boot deadline
 * (SERVFAIL) rather than hang.  As PID 1 it must never exit, or the kernel
 * would panic and QEMU would stop, which is a different failure mode.
 */
#include <errno.h>
#include <unistd.h>

int main(void)
{
    static const char msg[] = "silent: booted, deliberately not listening\n";
    ssize_t r;
    do
        r = write(1, msg, sizeof msg - 1);
    while (r < 0 && errno == EINTR);
    for (;;)
        pause(); /* no handlers installed, so nothing ever wakes init */
}
