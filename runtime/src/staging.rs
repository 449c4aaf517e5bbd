//! Host-to-device copies of converted weights through page-locked
//! (pinned) staging buffers: the values are converted to 16 bits straight
//! into one buffer while the copy engine drains the other, and a copy from
//! pinned memory runs at the link's rate, where a copy from pageable memory
//! goes through the driver's own bounce buffers, one at a time.

use cudarc::driver::PinnedHostSlice;
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream, CudaViewMut, DevicePtrMut, DriverError};
use std::sync::Arc;

/// Values (16-bit) per staging buffer: 8 Mi (16 MiB).
const CHUNK: usize = 8 << 20;

/// Staging buffers in turn.
const BUFFERS: usize = 2;

/// Pinned buffers, each with the event of the last copy out of it.
pub(crate) struct Staging {
    slots: Vec<(PinnedHostSlice<u16>, CudaEvent)>,
    next: usize,
}

impl Staging {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Result<Staging, DriverError> {
        let mut slots = Vec::with_capacity(BUFFERS);
        for _ in 0..BUFFERS {
            // Safety: every value of a buffer is written before it is copied
            // (only the first `n` of a chunk of `n` are copied).
            let buf = unsafe { ctx.alloc_pinned::<u16>(CHUNK) }?;
            slots.push((buf, ctx.new_event(None)?));
        }
        Ok(Staging { slots, next: 0 })
    }

    /// Queues `values`, each converted by `convert`, into the first
    /// `values.len()` halves of `dst` (which holds at least that many).
    pub(crate) fn upload(
        &mut self,
        stream: &Arc<CudaStream>,
        values: &[f32],
        convert: impl Fn(f32) -> u16 + Sync,
        dst: &mut CudaViewMut<'_, u16>,
    ) -> Result<(), DriverError> {
        use rayon::prelude::*;
        if dst.len() < values.len() {
            return Err(DriverError(cudarc::driver::sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE));
        }
        let (base, _sync) = dst.device_ptr_mut(stream);
        for (i, chunk) in values.chunks(CHUNK).enumerate() {
            let k = self.next;
            self.next = (k + 1) % self.slots.len();
            let (buf, done) = &mut self.slots[k];
            // The copy queued from this buffer last time has finished.
            done.synchronize()?;
            let host = buf.as_mut_slice()?;
            let host = &mut host[..chunk.len()];
            host.par_iter_mut().zip(chunk.par_iter()).for_each(|(h, v)| *h = convert(*v));
            let at = base + (i * CHUNK * std::mem::size_of::<u16>()) as u64;
            // Safety: `at` addresses `chunk.len()` halves inside `dst`
            // (checked above), on the stream the buffer is used on; `host`
            // stays allocated and unwritten until `done` says the copy is
            // over (waited for above before the next write, and on drop).
            unsafe { result::memcpy_htod_async(at, host, stream.cu_stream()) }?;
            done.record(stream)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // The pinned memory outlives every copy out of it.
        for (_, done) in &self.slots {
            let _ = done.synchronize();
        }
    }
}
