/* ctl_http.c - bin/atpctl's HTTP client on libcurl.
 *
 * One easy handle for the whole run: libcurl keeps its connection open
 * between requests to the same host, so an import's chunks go over one
 * keep-alive connection, and TLS (https:// with the system's CA store or
 * --cacert), DNS, redirects refused, connect and total timeouts are libcurl's
 * well-trodden code instead of ours. Only this file includes libcurl.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "ctl.h"

/* The answer is kept up to this many bytes; a larger one is refused as
 * unreadable rather than taking the operator's memory. */
static size_t on_body(char *data, size_t size, size_t n, void *ctx) {
  ctl_resp_t *resp = ctx;
  size_t bytes = size * n;
  if (atp_buf_append(&resp->body, data, bytes) != 0) return 0; /* curl fails it */
  return bytes;
}

void ctl_resp_init(ctl_resp_t *resp) {
  memset(resp, 0, sizeof *resp);
  atp_buf_init(&resp->body, ATP_CTL_RESPONSE_BYTES_MAX);
  resp->retry_after_s = -1;
}

void ctl_resp_free(ctl_resp_t *resp) {
  atp_buf_free(&resp->body);
}

void ctl_url_encode(atp_buf_t *out, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
        c == '-' || c == '_' || c == '.' || c == '~') {
      atp_buf_append(out, s, 1);
    } else {
      char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
      atp_buf_append(out, esc, 3);
    }
  }
}

/* http://HOST[...] or https://HOST[...] with a non-empty host. */
static bool url_shape_ok(const char *url) {
  const char *h = NULL;
  if (!strncmp(url, "http://", 7))
    h = url + 7;
  else if (!strncmp(url, "https://", 8))
    h = url + 8;
  return h && *h && *h != '/' && *h != ':' && !strchr(url, ' ');
}

int ctl_http_init(ctl_http_t *h, const char *url, const char *token, long timeout_ms,
                  long connect_ms, const char *cacert, bool insecure) {
  memset(h, 0, sizeof *h);
  if (!url_shape_ok(url)) return ATP_EBADREQ;
  h->url = url;
  h->url_len = strlen(url);
  while (h->url_len && url[h->url_len - 1] == '/') h->url_len--;
  h->timeout_ms = timeout_ms;
  h->connect_ms = connect_ms < timeout_ms ? connect_ms : timeout_ms;
  atp_buf_init(&h->scratch, 0);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return ATP_ENOMEM;
  CURL *c = curl_easy_init();
  if (!c) return ATP_ENOMEM;
  h->curl = c;
  struct curl_slist *hdr = NULL;
  /* Expect: 100-continue would cost a round trip (or a second's wait) per
   * large chunk; atpd reads the body anyway. */
  hdr = curl_slist_append(hdr, "Expect:");
  hdr = curl_slist_append(hdr, "Accept: application/json");
  if (token) {
    atp_buf_t auth;
    atp_buf_init(&auth, 0);
    atp_buf_printf(&auth, "Authorization: Bearer %s", token);
    atp_buf_append(&auth, "", 1);
    if (!auth.failed) hdr = curl_slist_append(hdr, auth.data);
    atp_buf_free(&auth);
  }
  if (!hdr) return ATP_ENOMEM;
  h->headers = hdr;
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, h->errbuf);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* SIGINT stays ours (import) */
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, h->timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, h->connect_ms);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "atpctl");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  if (cacert) curl_easy_setopt(c, CURLOPT_CAINFO, cacert);
  if (insecure) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  return 0;
}

void ctl_http_free(ctl_http_t *h) {
  if (h->curl) curl_easy_cleanup(h->curl);
  if (h->headers) curl_slist_free_all(h->headers);
  atp_buf_free(&h->scratch);
  h->curl = h->headers = NULL;
  curl_global_cleanup();
}

/* Says on stderr why no answer came, in the words a script's log needs. */
static void say_unreachable(const ctl_http_t *h, CURLcode rc) {
  const char *why = h->errbuf[0] ? h->errbuf : curl_easy_strerror(rc);
  int n = (int)h->url_len;
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
      fprintf(stderr, "atpctl: cannot connect to %.*s: %s\n", n, h->url, why);
      break;
    case CURLE_OPERATION_TIMEDOUT:
      fprintf(stderr,
              "atpctl: %.*s: no answer within the timeout (--timeout-ms %ld): %s\n", n,
              h->url, h->timeout_ms, why);
      break;
    case CURLE_WRITE_ERROR:
      fprintf(stderr, "atpctl: %.*s: the answer is over %u bytes\n", n, h->url,
              (unsigned)ATP_CTL_RESPONSE_BYTES_MAX);
      break;
    default:
      fprintf(stderr, "atpctl: %.*s: %s\n", n, h->url, why);
  }
}

int ctl_http_request(ctl_http_t *h, const char *method, const char *path,
                     const char *content_type, const void *body, size_t body_len,
                     ctl_resp_t *resp) {
  ATP_ASSERT(h->curl && path[0] == '/');
  CURL *c = h->curl;
  atp_buf_reset(&resp->body);
  resp->status = 0;
  resp->content_type[0] = '\0';
  resp->retry_after_s = -1;
  atp_buf_reset(&h->scratch);
  atp_buf_append(&h->scratch, h->url, h->url_len);
  atp_buf_append(&h->scratch, path, strlen(path) + 1);
  if (h->scratch.failed) return ATP_ENOMEM;
  curl_easy_setopt(c, CURLOPT_URL, h->scratch.data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, resp);
  struct curl_slist *extra = NULL, *all = h->headers;
  if (body) {
    char ct[160];
    snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
    /* The request's own header list: the shared one plus its Content-Type. */
    for (struct curl_slist *s = h->headers; s; s = s->next)
      extra = curl_slist_append(extra, s->data);
    extra = curl_slist_append(extra, ct);
    if (!extra) return ATP_ENOMEM;
    all = extra;
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
  } else {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  }
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST,
                   strcmp(method, body ? "POST" : "GET") ? method : NULL);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, all);
  h->errbuf[0] = '\0';
  CURLcode rc = curl_easy_perform(c);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h->headers);
  curl_slist_free_all(extra);
  atp_buf_append(&resp->body, "", 1); /* NUL after the body, not counted */
  if (!resp->body.failed) resp->body.len--;
  if (rc != CURLE_OK) {
    say_unreachable(h, rc);
    return ATP_EUNAVAILABLE;
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  resp->status = (int)status;
  char *ct = NULL;
  if (curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
    snprintf(resp->content_type, sizeof resp->content_type, "%s", ct);
  struct curl_header *ra = NULL;
  if (curl_easy_header(c, "Retry-After", 0, CURLH_HEADER, -1, &ra) == CURLHE_OK && ra)
    resp->retry_after_s = strtol(ra->value, NULL, 10);
  return 0;
}
