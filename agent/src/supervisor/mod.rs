//! Supervises app processes. (Being written; see the module spec.)
