/* instance.c - one atpd per listening port and per data dir (see instance.h). */
#include "atp/instance.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "atp/error.h"

#define LOCK_FILE "atpd.lock"

static socklen_t port_lock_addr(int port, struct sockaddr_un *addr) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1, "atpd/port/%d", port);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* The pid behind a listening abstract socket, or 0 when it cannot be told. */
static int abstract_owner_pid(const struct sockaddr_un *addr, socklen_t len) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int pid = 0;
  struct ucred cred;
  socklen_t cred_len = sizeof cred;
  if (connect(fd, (const struct sockaddr *)addr, len) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) == 0)
    pid = (int)cred.pid;
  close(fd);
  return pid;
}

/* Binds the abstract Unix socket "atpd/port/P" and keeps it. Abstract names
 * live in the network namespace, like the port itself, and vanish with the
 * process: no stale file to clean after a crash. Listening on it lets a second
 * process learn our pid (SO_PEERCRED); nobody accepts, a handful of such
 * probes at most sit in the backlog. */
static int lock_port(int port, char *err, size_t err_len) {
  struct sockaddr_un addr;
  socklen_t len = port_lock_addr(port, &addr);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, err_len, "cannot create the port lock: %s", strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  if (bind(fd, (struct sockaddr *)&addr, len) != 0) {
    int saved = errno;
    close(fd);
    if (saved == EADDRINUSE) {
      int pid = abstract_owner_pid(&addr, len);
      if (pid > 0)
        snprintf(err, err_len, "address in use: another atpd (pid %d) holds port %d",
                 pid, port);
      else
        snprintf(err, err_len, "address in use: another atpd holds port %d", port);
    } else {
      snprintf(err, err_len, "cannot take the port lock: %s", strerror(saved));
    }
    return ATP_EUNAVAILABLE;
  }
  listen(fd, 4);
  /* fd stays open on purpose: the claim is the open socket. */
  return 0;
}

/* The port fd is bound to; 0, never a bound port, when it cannot be read. */
static int sockaddr_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return 0;
  if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int atp_instance_claim_port(const char *host, int port, int *port_out, char *err,
                            size_t err_len) {
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char port_str[16];
  snprintf(port_str, sizeof port_str, "%d", port);
  const char *node = host && *host ? host : NULL;
  int gai = getaddrinfo(node, port_str, &hints, &res);
  if (gai) {
    snprintf(err, err_len, "cannot resolve %s: %s", node ? node : "*",
             gai_strerror(gai));
    return ATP_EUNAVAILABLE;
  }
  /* Same order as the loops' own binds (the first address that binds). The
   * probe has SO_REUSEADDR, so connections of an earlier run in TIME_WAIT do
   * not count, but not SO_REUSEPORT, so any listener on the port does. */
  int fd = -1, saved = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      saved = errno;
      continue;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
        bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
      break;
    saved = errno;
    close(fd);
    fd = -1;
    if (saved == EADDRINUSE) break;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    struct sockaddr_un addr;
    socklen_t len = port_lock_addr(port, &addr);
    int pid = saved == EADDRINUSE && port > 0 ? abstract_owner_pid(&addr, len) : 0;
    if (pid > 0)
      snprintf(err, err_len, "address in use: another atpd (pid %d) serves port %d",
               pid, port);
    else if (saved == EADDRINUSE)
      snprintf(err, err_len, "address in use: another process listens on port %d",
               port);
    else
      snprintf(err, err_len, "%s", strerror(saved));
    return ATP_EUNAVAILABLE;
  }
  int got = sockaddr_port(fd);
  if (got <= 0) {
    snprintf(err, err_len, "cannot read the bound port: %s", strerror(errno));
    close(fd);
    return ATP_EUNAVAILABLE;
  }
  /* Locked while the probe still holds the port: whichever of two starting
   * processes takes the lock first wins, the other fails here or at its probe. */
  int rc = lock_port(got, err, err_len);
  close(fd);
  if (rc) return rc;
  *port_out = got;
  return 0;
}

int atp_instance_make_dir(const char *dir, char *err, size_t err_len) {
  char path[PATH_MAX];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof path) {
    snprintf(err, err_len, "The data dir path is empty or too long.");
    return ATP_EUNAVAILABLE;
  }
  memcpy(path, dir, n + 1);
  /* mkdir -p: each parent in turn, then the dir itself. */
  for (size_t i = 1; i <= n; i++) {
    if (path[i] != '/' && path[i] != '\0') continue;
    char c = path[i];
    path[i] = '\0';
    if (mkdir(path, 0750) != 0 && errno != EEXIST) {
      snprintf(err, err_len, "The data dir %s cannot be created: %s.", dir,
               strerror(errno));
      return ATP_EUNAVAILABLE;
    }
    path[i] = c;
  }
  struct stat st;
  if (stat(dir, &st) != 0) {
    snprintf(err, err_len, "The data dir %s cannot be created: %s.", dir,
             strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  if (!S_ISDIR(st.st_mode)) {
    snprintf(err, err_len, "The data dir %s is not a directory.", dir);
    return ATP_EUNAVAILABLE;
  }
  return 0;
}

int atp_instance_lock_dir(const char *dir, char *err, size_t err_len) {
  char path[PATH_MAX];
  if (snprintf(path, sizeof path, "%s/%s", dir, LOCK_FILE) >= (int)sizeof path) {
    snprintf(err, err_len, "The data dir path is too long.");
    return ATP_EUNAVAILABLE;
  }
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    snprintf(err, err_len, "The data dir %s is not writable: %s.", dir,
             strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  /* A POSIX record lock, not flock: F_GETLK tells who holds it. It is the
   * process's, dropped when the process exits however it exits; nothing else
   * in atpd opens this file (closing any descriptor of it would drop it). */
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(fd, F_SETLK, &fl) != 0) {
    int saved = errno;
    if (saved == EAGAIN || saved == EACCES) {
      struct flock who;
      memset(&who, 0, sizeof who);
      who.l_type = F_WRLCK;
      who.l_whence = SEEK_SET;
      if (fcntl(fd, F_GETLK, &who) == 0 && who.l_type != F_UNLCK && who.l_pid > 0)
        snprintf(err, err_len, "data dir %s is in use by another atpd (pid %d)", dir,
                 (int)who.l_pid);
      else
        snprintf(err, err_len, "data dir %s is in use by another atpd", dir);
      close(fd);
      return ATP_ECONFLICT;
    }
    close(fd);
    snprintf(err, err_len, "The data dir %s cannot be locked: %s.", dir,
             strerror(saved));
    return ATP_EUNAVAILABLE;
  }
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
    int saved = errno;
    close(fd);
    snprintf(err, err_len, "The data dir %s is not writable: %s.", dir,
             strerror(saved));
    return ATP_EUNAVAILABLE;
  }
  /* fd stays open on purpose: the lock is the open descriptor. */
  return 0;
}
