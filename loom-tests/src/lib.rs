//! Loom models of switchboard; see tests/.
