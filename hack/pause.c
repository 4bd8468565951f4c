/* The pod sandbox ("pause") process of the real nodes: holds the pod's
 * namespaces, reaps orphaned children, exits on SIGINT/SIGTERM.
 * Built static by hack/image.sh pause (gcc -Os -static). */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int sig) { (void)sig; _exit(0); }

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &sa, 0);
  signal(SIGINT, quit);
  signal(SIGTERM, quit);
  for (;;) pause();
}
