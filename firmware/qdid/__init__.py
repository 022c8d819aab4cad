# qdid: device identity (PUF, fuzzy extractor, seeds, entropy, P-256, DER).
# Kept tiny: importing the package must cost next to no heap.


class QdidError(Exception):
    # Base of every exception raised by qdid; modules add their own subclasses.
    pass
