/* error.c - the error table's look-ups (see error.h). */
#include "atp/error.h"

const char *atp_strerror_code(int err) {
  switch (err) {
#define ATP_ERRNO_CODE(name, value, code, status, message) \
  case value:                                              \
    return code;
    ATP_ERRNO_MAP(ATP_ERRNO_CODE)
#undef ATP_ERRNO_CODE
    default:
      return "internal";
  }
}

int atp_error_http_status(int err) {
  switch (err) {
#define ATP_ERRNO_STATUS(name, value, code, status, message) \
  case value:                                                \
    return status;
    ATP_ERRNO_MAP(ATP_ERRNO_STATUS)
#undef ATP_ERRNO_STATUS
    default:
      return 500;
  }
}

const char *atp_strerror(int err) {
  switch (err) {
#define ATP_ERRNO_MESSAGE(name, value, code, status, message) \
  case value:                                                 \
    return message;
    ATP_ERRNO_MAP(ATP_ERRNO_MESSAGE)
#undef ATP_ERRNO_MESSAGE
    default:
      return "Internal error.";
  }
}
