// A MotrThread token cannot move to another thread.
use hax_core::MotrThread;

fn smuggle(t: MotrThread<'_>) {
    std::thread::spawn(move || {
        let _t = t;
    });
}

fn main() {}
