//! A layer's projected mixer inputs on the GPU. Every projection reads the
//! same normed residual `h`, so the first stage of each (a full projection,
//! or a low-rank gate's bottleneck) that has no bias is stacked into one
//! weight: a decode step computes them all in one GEMV launch (q, k, v, g and
//! the gate's bottleneck of GLA: five launches and five short streams over
//! weights become one), each written straight into the mixer's input buffer.
//! Prefill runs the same rows through cuBLAS, one GEMM per projection.

use super::super::stacking::{stack_plan, Candidate};
use super::{BlockNorm, Workspace};
use crate::Error;
use mixc_ir::DType;
use mixc_runtime::cuda::{CudaRunner, CudaSlice, CudaViewMut, DeviceTensor, PreparedRun};
use mixc_runtime::dense::{Dense, Linear, Rows};
use mixc_runtime::gemv::SEGMENTS;
use mixc_runtime::glue::Act;
use mixc_runtime::projections::GemvX;

/// Where a projection's first stage comes from.
pub(super) enum First {
    /// Rows of the layer's stacked weight.
    Stacked(Rows),
    /// A weight of its own (it has a bias, or the stack is full).
    Own(Linear),
}

/// One projected input of a layer's mixer.
pub(super) struct Member {
    pub input: String,
    pub first: First,
    /// The second stage of a low-rank projection (`[size, rank]`), applied to
    /// the first stage's output.
    pub second: Option<Linear>,
}

/// A layer's projected inputs.
#[derive(Default)]
pub(super) struct Inputs {
    /// The first stages stacked (`[Σ rows, d]`, in the act dtype), if any.
    pub stacked: Option<DeviceTensor>,
    /// Stacked members first, in stacking order.
    pub members: Vec<Member>,
}

/// A projection as the loader found it: the input it feeds, its first
/// stage (the weights' name prefix, `[rows, d]` f32 values, whether it has
/// a bias) and its second stage, if low-rank.
pub(super) struct Found<'a> {
    pub input: String,
    pub prefix: String,
    pub weight: &'a [f32],
    pub rows: usize,
    pub biased: bool,
    pub second: Option<Linear>,
}

impl Inputs {
    /// Stacks what can be stacked and uploads it; `own` uploads a first
    /// stage that stays on its own (`[rows, d]` with its bias).
    pub fn build(
        runner: &CudaRunner,
        dtype: DType,
        d: usize,
        found: Vec<Found>,
        own: impl Fn(&Found) -> Result<Linear, Error>,
    ) -> Result<Inputs, Error> {
        let candidates: Vec<Candidate> =
            found.iter().map(|f| Candidate { biased: f.biased, low_rank: f.second.is_some() }).collect();
        let plan = stack_plan(&candidates, SEGMENTS);
        let mut members = Vec::new();
        let mut data: Vec<&[f32]> = Vec::new();
        let mut rows = 0;
        let mut rest = Vec::new();
        for (f, joins) in found.into_iter().zip(plan) {
            if joins {
                // (A low-rank member's bottleneck goes to the workspace's `wide_act`.)
                data.push(f.weight);
                members.push(Member {
                    input: f.input,
                    first: First::Stacked(Rows { first: rows, count: f.rows }),
                    second: f.second,
                });
                rows += f.rows;
            } else {
                rest.push(f);
            }
        }
        for f in rest {
            let first = First::Own(own(&f)?);
            members.push(Member { input: f.input, first, second: f.second });
        }
        let stacked = if rows > 0 { Some(runner.upload_f32_stacked(&data, &[rows, d], dtype)?) } else { None };
        Ok(Inputs { stacked, members })
    }

    /// Bytes of the weights on the card.
    pub fn bytes(&self) -> usize {
        let mut n = self.stacked.as_ref().map_or(0, |s| s.bytes());
        for m in &self.members {
            if let First::Own(l) = &m.first {
                n += l.bytes();
            }
            n += m.second.as_ref().map_or(0, Linear::bytes);
        }
        n
    }

    /// The widest per-token output of any stage.
    pub fn widest(&self) -> usize {
        let mut n = 0;
        for m in &self.members {
            n = n.max(match &m.first {
                First::Stacked(r) => r.count,
                First::Own(l) => l.out(),
            });
            n = n.max(m.second.as_ref().map_or(0, |l| l.out()));
        }
        n
    }

    /// Computes every projected input of `rows` rows of the residual
    /// `w.x` normed by `norm` into the mixer's input buffers of `run` (in
    /// their dtypes): the norm folded into the stacked GEMV where it can
    /// be, else into `w.h` first.
    #[allow(clippy::too_many_arguments)]
    pub fn project(
        &self,
        runner: &CudaRunner,
        dense: &Dense,
        run: &mut PreparedRun,
        w: &mut Workspace,
        rows: usize,
        mixer: &str,
        norm: &BlockNorm,
    ) -> Result<(), Error> {
        let err = |msg: String| Error::Run { mixer: mixer.to_string(), msg };
        let mut slots = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let s = run.input_slot(&m.input).ok_or_else(|| err(format!("no input buffer `{}`", m.input)))?;
            let dtype = run.slot_type(s).map_or(DType::F32, |x| x.1);
            if !matches!(dtype, DType::F32 | DType::BF16) {
                return Err(err(format!("input `{}` is stored as {dtype}: expected f32 or bf16", m.input)));
            }
            slots.push((s, dtype));
        }
        // One launch for the stack where the GEMV fits and every stacked
        // output is bf16 (a low-rank bottleneck's is the act dtype: bf16
        // where the GEMV fits).
        let stacked_members: Vec<usize> =
            (0..self.members.len()).filter(|i| matches!(self.members[*i].first, First::Stacked(_))).collect();
        let fused = match &self.stacked {
            Some(stacked) => {
                let d = stacked.shape.get(1).copied().unwrap_or(0);
                let bf16 =
                    stacked_members.iter().all(|i| self.members[*i].second.is_some() || slots[*i].1 == DType::BF16);
                dense.gemv_fits(rows, d) && bf16
            }
            None => false,
        };
        // The norm folds into the stacked launch when nothing else reads `h`.
        let all_stacked = stacked_members.len() == self.members.len();
        let folds = fused && all_stacked && norm.folds(dense, rows);
        if !folds {
            norm.apply(dense, runner, &mut w.h.buf, &w.x.buf, rows)?;
        }
        if let (true, Some(stacked)) = (fused, &self.stacked) {
            let x = if folds { norm.folded(&w.x.buf, &w.h.buf, &w.partials.buf) } else { GemvX::Act(&w.h.buf) };
            self.stacked_gemv(runner, dense, run, &mut w.wide_act.buf, x, rows, stacked, &stacked_members, &slots)?;
        }
        for (m, (slot, dtype)) in self.members.iter().zip(slots) {
            let stacked = || self.stacked.as_ref().ok_or_else(|| err("no stacked weight".into()));
            // A low-rank projection's bottleneck into `wide_act` (the fused
            // launch wrote a stacked one already).
            let x = match (&m.second, &m.first) {
                (None, First::Stacked(_)) if fused => continue,
                (None, _) => &w.h.buf,
                (Some(_), First::Stacked(part)) => {
                    if !fused {
                        dense.project(
                            runner,
                            &mut w.wide_act.buf,
                            dense.act,
                            &w.h.buf,
                            stacked()?,
                            *part,
                            rows,
                            false,
                        )?;
                    }
                    &w.wide_act.buf
                }
                (Some(_), First::Own(a)) if a.bias.is_none() => {
                    dense.linear_as(runner, &mut w.wide_act.buf, dense.act, &w.h.buf, a, rows, false)?;
                    &w.wide_act.buf
                }
                (Some(_), First::Own(a)) => {
                    dense.linear(runner, &mut w.wide.buf, &w.h.buf, a, rows, false)?;
                    dense.to_act(runner, &mut w.wide_act.buf, &w.wide.buf, rows * a.out())?;
                    &w.wide_act.buf
                }
            };
            let target = run.buffer_mut(slot).ok_or_else(|| err(format!("no input buffer `{}`", m.input)))?;
            match (&m.second, &m.first) {
                (Some(lin), _) | (None, First::Own(lin)) => match dtype {
                    DType::BF16 if lin.bias.is_none() => {
                        dense.linear_as(runner, target, Act::Bf16, x, lin, rows, false)?
                    }
                    DType::BF16 => {
                        dense.linear(runner, &mut w.wide.buf, x, lin, rows, false)?;
                        dense.cast_bf16(runner, target, &w.wide.buf, rows * lin.out())?;
                    }
                    _ => dense.linear(runner, target, x, lin, rows, false)?,
                },
                (None, First::Stacked(part)) => {
                    let y_act = if dtype == DType::BF16 { Act::Bf16 } else { Act::F32 };
                    dense.project(runner, target, y_act, x, stacked()?, *part, rows, false)?;
                }
            }
        }
        Ok(())
    }

    /// The one launch over the stacked weight: each member's rows into its
    /// input buffer, a low-rank member's into `wide_act`.
    #[allow(clippy::too_many_arguments)]
    fn stacked_gemv(
        &self,
        runner: &CudaRunner,
        dense: &Dense,
        run: &mut PreparedRun,
        wide_act: &mut CudaSlice<u32>,
        x: GemvX,
        rows: usize,
        stacked: &DeviceTensor,
        members: &[usize],
        slots: &[(usize, DType)],
    ) -> Result<(), Error> {
        let direct: Vec<usize> =
            members.iter().filter(|i| self.members[**i].second.is_none()).map(|i| slots[*i].0).collect();
        let mut bufs = run
            .buffers_mut(&direct)
            .ok_or_else(|| Error::Usage("two projections share a mixer input".into()))?
            .into_iter();
        let mut wide = Some(wide_act.slice_mut(..));
        let mut views: Vec<CudaViewMut<'_, u32>> = Vec::with_capacity(members.len());
        let mut parts = Vec::with_capacity(members.len());
        for i in members {
            let m = &self.members[*i];
            let First::Stacked(part) = m.first else { continue };
            parts.push(part);
            let view = match &m.second {
                None => bufs.next().map(|b| b.slice_mut(..)),
                Some(_) => wide.take(),
            };
            views.push(view.ok_or_else(|| Error::Usage("a stacked projection without a buffer".into()))?);
        }
        Ok(dense.project_stacked(runner, &mut views, x, stacked, &parts, rows)?)
    }
}
