//! The journal: SQLite record of deployments, steps, releases and which
//! release each environment runs. (Being written; see the module spec.)
