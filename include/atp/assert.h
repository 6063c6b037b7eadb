/* assert.h - assertions that release builds keep.
 *
 * ATP_ASSERT(cond) checks a programmer's promise: a precondition, a
 * postcondition or an invariant written down next to the data. It is never a
 * way to handle bad input (that is an ATP_E* value, see error.h). When cond is
 * false the process prints the expression, file, line and function on stderr
 * and aborts, in every build: a broken invariant in an inventory service is a
 * wrong promise to a customer, and a crash with a core is cheaper than that.
 * <assert.h> is not used anywhere, because NDEBUG would turn it off.
 *
 * The condition is evaluated exactly once and must have no side effects that
 * the code relies on. The failure path is cold and out of line, so an assert
 * costs one predicted branch.
 *
 * Thread: any.
 */
#ifndef ATP_ASSERT_H
#define ATP_ASSERT_H

#define ATP_ASSERT(cond)                                    \
  do {                                                      \
    if (__builtin_expect(!(cond), 0))                       \
      atp_assert_fail(#cond, __FILE__, __LINE__, __func__); \
  } while (0)

/* Prints "atpd: assertion failed: EXPR (FILE:LINE, FUNC)" on stderr, aborts. */
_Noreturn __attribute__((cold)) void atp_assert_fail(const char *expr, const char *file,
                                                     int line, const char *func);

#endif
