/*
 * glue_check.h - the rules both backends apply to a message hax sends before
 * it reaches Motr: what Motr, or the receiving process, would assert on.
 * Private to hax-sys; not part of hax_glue.h.
 */
#ifndef HAX_GLUE_CHECK_H
#define HAX_GLUE_CHECK_H

#include <stddef.h>

#include "hax_glue.h"

/* 0, or the hax_rc code of the first broken rule with *why saying which. */
int glue_check_msg(const struct hax_msg *m, char *why, size_t wlen);

#endif /* HAX_GLUE_CHECK_H */
