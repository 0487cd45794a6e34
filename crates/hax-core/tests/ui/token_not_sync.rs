// A MotrThread token cannot be shared with another thread.
use hax_core::MotrThread;

fn needs_sync<T: Sync>(_: &T) {}

fn share(t: MotrThread<'_>) {
    needs_sync(&t);
}

fn main() {}
