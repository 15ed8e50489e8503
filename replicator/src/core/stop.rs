//! A clean stop: once the shell has flushed the store with nothing in
//! flight, every idle extent may leave the activity log (after the bitmap
//! is saved), so the next start resyncs nothing it does not have to.

use super::Core;

impl Core {
    /// The store was flushed after the last write the core emitted.
    pub fn prepare_stop(&mut self) {
        self.flushed_epoch = self.write_epoch;
        self.p.al_trim_wanted = true;
        self.p.want_bitmap = true;
        self.pump();
    }
}
