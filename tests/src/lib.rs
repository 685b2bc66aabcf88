//! edgelm-tests (in progress).
