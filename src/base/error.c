/* error.c - the error table's look-ups (see error.h). */
#include "atp/error.h"

const char *atp_strerror_code(int err) {
  switch (err) {
#define ATP_ERRNO_CODE(name, value, code, status) \
  case value:                                     \
    return code;
    ATP_ERRNO_MAP(ATP_ERRNO_CODE)
#undef ATP_ERRNO_CODE
    default:
      return "internal";
  }
}

int atp_error_http_status(int err) {
  switch (err) {
#define ATP_ERRNO_STATUS(name, value, code, status) \
  case value:                                       \
    return status;
    ATP_ERRNO_MAP(ATP_ERRNO_STATUS)
#undef ATP_ERRNO_STATUS
    default:
      return 500;
  }
}

const char *atp_strerror(int err) {
  switch (err) {
    case ATP_EBADREQ:
      return "The request is malformed.";
    case ATP_EUNAUTH:
      return "A valid bearer token is required.";
    case ATP_EFORBIDDEN:
      return "This token's role may not call this route.";
    case ATP_ENOTOWNER:
      return "This source does not own the field it writes.";
    case ATP_ENOTFOUND:
      return "Not found.";
    case ATP_EINSUFFICIENT:
      return "Not enough stock to fill the request.";
    case ATP_ECONFLICT:
      return "The action is not allowed in the current state.";
    case ATP_ETOOLARGE:
      return "The request body is over this route's limit.";
    case ATP_EMEDIATYPE:
      return "The body must be JSON or MessagePack.";
    case ATP_EIDEMPOTENCY:
      return "This id was already used with different content.";
    case ATP_ETOOMANY:
      return "Too many requests; retry later.";
    case ATP_EUNAVAILABLE:
      return "The service is not available yet.";
    case ATP_EFULL:
      return "A capacity limit was reached; retry later.";
    case ATP_ENOMEM:
      return "Out of memory.";
    case ATP_EOVERFLOW:
      return "The quantity would leave the supported range.";
    case ATP_EHEADERS:
      return "The request headers are over 64 KiB.";
    case ATP_EURITOOLONG:
      return "The request target is over 8 KiB.";
    case ATP_ETIMEOUT:
      return "The request was not received in time.";
    case ATP_EVERSION:
      return "Only HTTP/1.x is served.";
    case ATP_ENOTIMPL:
      return "The request uses a feature this server does not implement.";
    default:
      return "Internal error.";
  }
}
