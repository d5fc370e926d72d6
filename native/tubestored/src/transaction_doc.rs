//! Transactions, in short (the code lives in `store` and `state`).
//!
//! A transaction is an overlay over the committed store: its writes go to the overlay, its
//! reads see the overlay first. Every base node it reads or writes is recorded with the
//! node's generation (0 when absent); every change to a node, including a change of its child
//! list, stamps a new generation. TRANSACTION_END "T" commits only if all recorded generations
//! are still current, else answers EAGAIN; so a commit fails exactly when something it looked
//! at was changed by another commit meanwhile. Watches fire at commit.
