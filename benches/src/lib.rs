//! edgelm-benches (in progress).
