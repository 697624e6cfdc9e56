"""Knote status bits (FreeBSD's ``KN_*`` names from kern_event.c; the numbers are ours).

A leaf module: the knote, the kevq and the scan all test these bits, and the C helper
hard-codes them (``_scan`` checks it agrees at import).
"""

KN_ACTIVE = 0x01  # the condition fired and has not been consumed
KN_DISABLED = 0x04  # EV_DISABLE / EV_DISPATCH: not reported
KN_DETACHED = 0x08  # deleted; a queued entry is discarded when reached
KN_SRCGONE = 0x20  # detached from its event source (fop.detach done or source gone)
KN_PROCESSING = 0x80  # owned by a kevq's thread until its next control()
KN_WS = 0x100  # taken by a thief, not yet delivered
