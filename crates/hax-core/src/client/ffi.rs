//! The calls into `hax_glue.h`'s client operations, on the client thread.
//! Each returns the C return code; conversions are in `raw.rs`.

use hax_sys as sys;

use super::thread::Runner;
use crate::fid::Fid;
use crate::raw::fid_to_raw;

/// First guess at an array's size; a larger one is asked for when needed.
const FIRST_CAP: u32 = 64;

/// Runs `call` with arrays of growing size until its entries fit.
fn fill<T: Default + Clone>(
    out: &mut Vec<T>,
    mut call: impl FnMut(*mut T, u32, &mut u32) -> i32,
) -> i32 {
    let mut cap = FIRST_CAP;
    // The count can grow between two calls; a few rounds are plenty.
    for _ in 0..4 {
        out.clear();
        out.resize(cap as usize, T::default());
        let mut nr = 0u32;
        let rc = call(out.as_mut_ptr(), cap, &mut nr);
        if rc == sys::HAX_E_LIMIT && nr > cap {
            cap = nr;
            continue;
        }
        out.truncate(if rc == 0 { nr.min(cap) as usize } else { 0 });
        return rc;
    }
    out.clear();
    sys::HAX_E_LIMIT
}

impl Runner<'_> {
    pub(crate) fn rconfc_start(&self, profile: Fid) -> i32 {
        let f = fid_to_raw(profile);
        // SAFETY: live handle (the client thread ends before fini), adopted
        // thread (self._thread); `f` outlives the call.
        unsafe { sys::hax_glue_rconfc_start(self.glue, &f) }
    }

    pub(crate) fn rconfc_stop(&self) -> i32 {
        // SAFETY: live handle, adopted thread.
        unsafe { sys::hax_glue_rconfc_stop(self.glue) }
    }

    pub(crate) fn sns(&self, kind: u32, op: u32, pool: Fid) -> i32 {
        let f = fid_to_raw(pool);
        // SAFETY: live handle, adopted thread; `f` outlives the call.
        unsafe { sys::hax_glue_sns(self.glue, kind, op, &f) }
    }

    pub(crate) fn sns_status(
        &self,
        kind: u32,
        pool: Fid,
        out: &mut Vec<sys::hax_sns_status>,
    ) -> i32 {
        let f = fid_to_raw(pool);
        fill(out, |p, cap, nr| {
            // SAFETY: live handle, adopted thread; `p` holds `cap` entries.
            unsafe { sys::hax_glue_sns_status(self.glue, kind, &f, p, cap, nr) }
        })
    }

    pub(crate) fn pver_status(&self, pver: Fid, out: &mut sys::hax_pver_info) -> i32 {
        let f = fid_to_raw(pver);
        // SAFETY: live handle, adopted thread; `f` and `out` outlive the call.
        unsafe { sys::hax_glue_pver_status(self.glue, &f, out) }
    }

    pub(crate) fn fs_stats(&self, out: &mut sys::hax_fs_stats) -> i32 {
        // SAFETY: live handle, adopted thread; `out` outlives the call.
        unsafe { sys::hax_glue_fs_stats(self.glue, out) }
    }

    pub(crate) fn proc_counters(
        &self,
        ios: Fid,
        proc_fid: &mut sys::hax_fid,
        out: &mut Vec<sys::hax_pver_count>,
    ) -> i32 {
        let f = fid_to_raw(ios);
        fill(out, |p, cap, nr| {
            // SAFETY: live handle, adopted thread; `p` holds `cap` entries,
            // `f` and `proc_fid` outlive the call.
            unsafe { sys::hax_glue_proc_counters(self.glue, &f, proc_fid, p, cap, nr) }
        })
    }
}
