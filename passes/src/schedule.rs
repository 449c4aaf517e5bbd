//! The schedule: a plain value saying how to run a mixer graph (serializable:
//! kernel bundles record the schedule their kernels were built under).

use mixc_ir::DType;
use std::fmt;
use std::str::FromStr;

/// The element type a program's activations are stored in (see
/// [`Schedule::storage`]); arithmetic is f32 whatever it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Storage {
    pub const ALL: [Storage; 3] = [Storage::F32, Storage::Bf16, Storage::F16];

    /// The buffers' dtype.
    pub fn dtype(self) -> DType {
        match self {
            Storage::F32 => DType::F32,
            Storage::Bf16 => DType::BF16,
            Storage::F16 => DType::F16,
        }
    }

    /// `f32`, `bf16` or `f16`: what [`Storage::from_str`] reads.
    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    /// Whether elements are 16-bit (values rounded on every store).
    pub fn is_narrow(self) -> bool {
        self != Storage::F32
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Storage {
    type Err = String;
    fn from_str(s: &str) -> Result<Storage, String> {
        Storage::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| format!("unknown storage dtype `{s}` (expected f32, bf16 or f16)"))
    }
}

/// How the recurrent and attention ops of a graph are cut into tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Chunk length of chunked recurrences (16…256).
    pub chunk: u32,
    /// Sub-chunk length of vector-gated (GLA) intra-chunk work, keeping every
    /// exponent ≤ 0; divides `chunk`.
    pub sub_chunk: u32,
    /// `false`: one program walks a head's chunks with the state on chip (fused).
    /// `true`: chunk-start states are written out by a first kernel and a second
    /// computes every chunk's output in parallel (split).
    pub split: bool,
    /// Query rows per program of flash attention.
    pub block_q: u32,
    /// Keys per inner step of flash attention.
    pub block_k: u32,
    /// Elements per program of elementwise and other generic kernels.
    pub block_elems: u32,
    /// Recurrences token by token (rank-1 state updates, the state on chip):
    /// the decode-step form, best when a call brings few tokens.
    pub step: bool,
    /// Computes a short causal convolution (Mamba2, Gated DeltaNet) inside the
    /// recurrence kernels that consume it: each chunk (or token) loads its rows
    /// and the `K − 1` rows before them of the convolution's input (the cached
    /// tail before `t = 0`) and applies the taps, the activation and whatever
    /// row-local ops lie between (reshape into heads, group broadcast, feature
    /// maps, L2 norm, per-step scaling) on chip; only a small kernel writing the
    /// new tail remains of the convolution. `false`: the convolution and each op
    /// after it are kernels of their own, with buffers in between.
    ///
    /// On by default; a serialized schedule without the field reads `false`,
    /// since it was recorded before the field existed, by a lowering that did
    /// not fuse (kernel bundles re-lower under their recorded schedule).
    #[serde(default)]
    pub fuse_conv: bool,
    /// Value columns per program of the recurrence kernels (fla's `BV`): the
    /// state `S [Dk, Dv]` splits by columns, and `o[:, j]` needs only `v[:, j]`
    /// and `S[:, j]`, so programs of (batch, head, value block) each carry
    /// `S[:, block]` and recompute what does not involve `v` (the `q·kᵀ`
    /// scores, gates, normalizers, the UT transform's `W`). This multiplies the
    /// parallelism of the sequential kernels (fused, split's state walk, token
    /// by token) and of split's output kernel by `⌈Dv / block_v⌉`, at the cost
    /// of that recomputation. A power of two ≥ 16; 0 (or not smaller than
    /// `Dv`): no split, the whole `Dv` in one program. Absent in a serialized
    /// schedule: 0, as recorded before the field existed.
    #[serde(default)]
    pub block_v: u32,
    /// The dtype of the program's activation inputs and outputs (`q`, `k`,
    /// `v`, gates, `beta`, `o`, ...: fla's and cuDNN's bf16 tensors), read
    /// into f32 and rounded (to nearest even) when stored; which buffers count
    /// as activations is said in `lower::storage`. Not part of the graph's
    /// math: the graph and its f64 reference are the same under every storage.
    /// Absent in a serialized schedule: f32, as recorded before it existed.
    #[serde(default)]
    pub storage: Storage,
    /// Tokens per pass over the state of the token-by-token form (`step`) of
    /// diagonal-gated recurrences: each iteration loads `n` tokens, computes
    /// their gates and normalizers, then applies their state updates and
    /// readouts one after the other (tokens past the end are identities), so
    /// a backend can keep a block of the state on chip (in registers on the
    /// CPU) through all `n` and read and write the state once per `n` tokens
    /// instead of once per token. The same arithmetic, token for token, as
    /// `n = 1`. Delta rules step one token at a time whatever it says. 1 to
    /// [`MAX_STEP_TOKENS`]; more than 1 only with `step`. Absent in a
    /// serialized schedule: 1, as recorded before it existed.
    #[serde(default = "one")]
    pub step_tokens: u32,
    /// Keys per program of attention split over keys (FlashDecoding): a
    /// first kernel runs a program per (query block, batch × head, run of
    /// `kv_split` keys) and writes un-normalized partial results, a second
    /// merges each row's `⌈Tk / kv_split⌉` partials. This multiplies the
    /// programs of a decode step, which has a single query block per head, by
    /// the splits of its cache. A multiple of `block_k` (at most
    /// [`MAX_KV_SPLIT`]); 0: off, one kernel walking all keys. Absent in a
    /// serialized schedule: 0, as recorded before it existed.
    #[serde(default)]
    pub kv_split: u32,
    /// With `split`: the chunk-start states come from a parallel pass and a
    /// scan instead of one program walking a head's chunks. A first kernel,
    /// one program per (chunk, batch × head, value block), writes each
    /// chunk's own contribution `(K ⊙ e^(Γ_c − Γ))ᵀ V` (and its total gate);
    /// a second, per (batch × head, value block), walks the chunks adding
    /// them up, `S_c = e^Γ_c ⊙ S_{c−1} + ΔS_c`, elementwise, writing every
    /// chunk-start state; split's output kernel follows. The matrix work
    /// leaves the sequential walk, which then streams states instead of
    /// computing them: for few sequences × heads (GLA-1.3B's 4 heads at one
    /// sequence: 4 programs walk the split's states), the walk's share of
    /// the time falls from most to little, at the cost of the contributions
    /// going through memory. Recurrences whose state pass is not a linear
    /// scan (mLSTM's stabilizer, the delta rules) keep split's walk. Absent
    /// in a serialized schedule: `false`, as recorded before it existed.
    #[serde(default)]
    pub scan: bool,
    /// GLA (per-key decays): the diagonal sub-chunk blocks of the intra-chunk
    /// scores, `P_ij = Σ_d q_id k_jd e^(Γ_id − Γ_jd)` for `j ≤ i`, from
    /// running products of the decays instead of an exponential per
    /// `(i, j, d)`: a loop over the sub-chunk's rows `i` carries
    /// `U_j = k_j ⊙ Π_{j<t≤i} e^(g_t)` (every row times `e^(g_i)`, then row
    /// `i` set to `k_i`), and row `i` of `P` is `U·q_i`. Two or three
    /// multiplies per `(i, j, d)` where the exponentials take a polynomial
    /// each: on a CPU (f32x4) the diagonal blocks took half of GLA's chunked
    /// prefill, and this form runs it 1.2× faster at chunks of 16 and 32
    /// (slower at 64); a GPU's special-function units make the exponentials
    /// cheap and the loop's sequential rows would idle its threads. No
    /// search offers it yet: on a CPU the token-by-token form still beats
    /// the chunked one with it (bench/RESULTS.md, 2026-12-07). Absent in a
    /// serialized schedule: `false`, as recorded before it existed.
    #[serde(default)]
    pub decay_products: bool,
    /// Rows of the state per block of the token-by-token form (`step`) of
    /// diagonal-gated recurrences: each pass walks the state `[Dk, Dv]` in
    /// blocks of this many rows (key dims), each loaded, updated by the
    /// pass's tokens, read out into the outputs' running sums and stored
    /// before the next, so the block a pass works on stays in the first-level
    /// cache instead of whole-state tiles going through the second level once
    /// per op. Row `i` of `S` depends only on `k_i`, `v` and its own decay, so
    /// the blocks are independent but for the readouts `o = Σ_blocks q_b S_b`
    /// (and the normalizers' `q·n`), which the passes sum before dividing.
    /// A CPU form (its backend holds each tile in memory); a divisor of the
    /// padded key dim, a power of two from 4 to 64; 0: the whole state at once.
    /// Absent in a serialized schedule: 0, as recorded before it existed.
    #[serde(default)]
    pub state_rows: u32,
    /// The token-by-token kernels of diagonal recurrences in value blocks
    /// (`block_v`) put the value blocks on grid axis 0 and the (batch,
    /// head)s on axis 1, so that programs started together — a GPU starts
    /// them in id order — cover whole rows of one head's state (a row's
    /// blocks are neighbours in memory) instead of the same block of every
    /// head (a 64-byte piece of each 2 KB row, GLA-1.3B at blocks of 16).
    /// The same arithmetic either way. Not yet run on a card (written
    /// 2026-12-08, when none was lent): the runtime takes it for GPU decode
    /// steps with `MIXC_STEP_BLOCKS_FIRST=1`. Absent in a serialized
    /// schedule: `false`, as recorded before it existed.
    #[serde(default)]
    pub blocks_first: bool,
}

fn one() -> u32 {
    1
}

/// Value columns per program of a GPU's decode step ([`Schedule::decode_for`];
/// heads with at most this many columns stay whole). A decode step streams
/// the state through once, so it is memory-bound, and one CTA per (batch,
/// head) leaves HBM idle: on an H100 (bf16, H=16, Dk=Dv=128, batch 64–256)
/// blocks of 64 raised GLA from 52–56% to 62–71% of the HBM peak, linear
/// attention 51–56% → 67–79%, simple GLA 51–56% → 69–82%, mLSTM 46–51% →
/// 58–66%, Gated DeltaNet 43–48% → 52–57%; blocks of 16 gained less and of 32
/// lost for some (bench/RESULTS.md, 2026-12-06).
pub const GPU_DECODE_BLOCK_V: u32 = 64;

/// Elements per program of a GPU decode step's elementwise and row kernels:
/// one per thread. A step's tensors are a few thousand values; blocks of
/// 1024 put them in one program whose threads walk 8 elements each, one
/// dependent load after another (GLA-1.3B's gate scale took 8 µs a layer,
/// H100, 2026-12-06).
pub const GPU_DECODE_BLOCK_ELEMS: u32 = 128;

/// The most tokens per pass of the token-by-token form ([`Schedule::step_tokens`]).
pub const MAX_STEP_TOKENS: u32 = 16;

/// The most keys per program of attention split over keys ([`Schedule::kv_split`]):
/// the kernels index keys in i32.
pub const MAX_KV_SPLIT: u32 = 1 << 20;

/// Keys per split program of a GPU's decode-step attention
/// ([`Schedule::decode_for`]): a decode step's one query block per head
/// otherwise leaves a CTA per (batch, head) streaming the whole cache alone.
pub const GPU_DECODE_KV_SPLIT: u32 = 512;

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            chunk: 64,
            sub_chunk: 16,
            split: false,
            block_q: 64,
            block_k: 64,
            block_elems: 1024,
            step: false,
            fuse_conv: true,
            block_v: 0,
            storage: Storage::F32,
            step_tokens: 1,
            kv_split: 0,
            scan: false,
            decay_products: false,
            state_rows: 0,
            blocks_first: false,
        }
    }
}

/// Query rows per attention program in decode steps ([`Schedule::decode`]).
pub const DECODE_BLOCK_Q: u32 = 16;

/// Query rows per attention program in a CPU's decode steps
/// ([`Schedule::decode_for`]): a step has one new token, and a CPU's `dot`
/// has no smallest tile, so the 16-row block did 16× the work (an attention
/// model at 2000 cached tokens, 4 layers of 8 heads × 64: 29 → 17 ms a step;
/// 2 rows measured the same as 1, 4 and 8 slower).
pub const CPU_DECODE_BLOCK_Q: u32 = 1;

/// Rows of the state per block of a CPU's decode step
/// ([`Schedule::state_rows`], [`Schedule::decode_for`]). A step reads the
/// state from memory, updates it, reads it out and writes it back; whole, a
/// `[128, 128]` f32 state is 64 KB, past the first-level cache, and each of
/// those ops was a pass through the second level while the memory stood
/// idle. In blocks of 8 rows (4 KB) the ops of a block run from the first
/// level and the blocks stream: at batch 16 (H = 16, Dk = Dv = 128, f32, 2
/// threads, the state cold in memory as in a model) GLA 3.6 → 2.2 ms, simple
/// GLA 3.8 → 1.7–2.1, linear attention 3.5 → 2.2–2.4, mLSTM 4.1 → 2.6–3.4;
/// batch 1 the same or faster (bench/RESULTS.md, 2026-12-07). Several tokens
/// a pass (a prefill) run slower in blocks (each pass reloads the blocks:
/// GLA, 64 tokens, 7 → 18 ms), so only the decode step takes them.
pub const CPU_DECODE_STATE_ROWS: u32 = 8;

impl Schedule {
    /// The default schedule with another chunk size (sub-chunks of at most 16).
    pub fn with_chunk(chunk: u32) -> Schedule {
        Schedule { chunk, sub_chunk: chunk.min(16), ..Schedule::default() }
    }

    /// The decode-step schedule: recurrences token by token (with the short
    /// convolution fused, which saves most of a decode step's launches), and
    /// attention in query blocks of 16 rows — a step has one or a few new
    /// tokens, and a 64-row block did 64× the work of one query (16 is the
    /// fewest rows the tensor-core `dot` takes).
    pub fn decode() -> Schedule {
        Schedule { step: true, block_q: DECODE_BLOCK_Q, ..Schedule::default() }
    }

    /// The decode step's schedule on a device of `kind`: [`Schedule::decode`];
    /// on a CPU with attention in query blocks of [`CPU_DECODE_BLOCK_Q`] and
    /// the recurrences' states in blocks of [`CPU_DECODE_STATE_ROWS`] rows;
    /// on a GPU with the value columns split into blocks of
    /// [`GPU_DECODE_BLOCK_V`], attention's keys into runs of
    /// [`GPU_DECODE_KV_SPLIT`] and generic kernels in blocks of
    /// [`GPU_DECODE_BLOCK_ELEMS`].
    pub fn decode_for(kind: crate::device::DeviceKind) -> Schedule {
        match kind {
            crate::device::DeviceKind::Gpu => Schedule {
                block_v: GPU_DECODE_BLOCK_V,
                kv_split: GPU_DECODE_KV_SPLIT,
                block_elems: GPU_DECODE_BLOCK_ELEMS,
                ..Schedule::decode()
            },
            _ => Schedule { block_q: CPU_DECODE_BLOCK_Q, state_rows: CPU_DECODE_STATE_ROWS, ..Schedule::decode() },
        }
    }

    /// The recurrence form in words: `chunk 64 fused`, `chunk 32 split`,
    /// `chunk 32 scan`, `token by token` or `token by token, 8 a pass`.
    pub fn form(&self) -> String {
        let rows = match self.state_rows {
            0 => String::new(),
            r => format!(", state in {r}-row blocks"),
        };
        match (self.step, self.step_tokens) {
            (true, 1) => format!("token by token{rows}"),
            (true, n) => format!("token by token, {n} a pass{rows}"),
            (false, _) => {
                let how = match (self.split, self.scan) {
                    (true, true) => "scan",
                    (true, false) => "split",
                    (false, _) => "fused",
                };
                format!("chunk {} {how}", self.chunk)
            }
        }
    }

    /// The token-by-token form over `n` tokens per pass of the state
    /// ([`Schedule::step_tokens`]): a prefill schedule for CPUs, where the
    /// state does not fit the first-level cache.
    pub fn steps(n: u32) -> Schedule {
        Schedule { step_tokens: n, ..Schedule::decode() }
    }

    /// Checks the schedule's own consistency.
    pub fn validate(&self) -> Result<(), String> {
        let pow2 = |x: u32| x.is_power_of_two();
        if !pow2(self.chunk) || !(1..=256).contains(&self.chunk) {
            return Err(format!("chunk {} must be a power of two up to 256", self.chunk));
        }
        if self.sub_chunk == 0 || !self.chunk.is_multiple_of(self.sub_chunk) {
            return Err(format!("sub-chunk {} must divide the chunk {}", self.sub_chunk, self.chunk));
        }
        if !pow2(self.block_q) || !pow2(self.block_k) || !pow2(self.block_elems) {
            return Err("block sizes must be powers of two".into());
        }
        if self.block_v != 0 && (!pow2(self.block_v) || self.block_v < 16) {
            return Err(format!("value block {} must be 0 (no split) or a power of two of at least 16", self.block_v));
        }
        if !(1..=MAX_STEP_TOKENS).contains(&self.step_tokens) {
            return Err(format!("tokens per step {} must be 1 to {MAX_STEP_TOKENS}", self.step_tokens));
        }
        if self.step_tokens > 1 && !self.step {
            return Err(format!("{} tokens per step need the token-by-token form (step)", self.step_tokens));
        }
        if self.state_rows != 0 && (!pow2(self.state_rows) || !(4..=64).contains(&self.state_rows)) {
            return Err(format!("state rows {} must be 0 (whole) or a power of two from 4 to 64", self.state_rows));
        }
        if self.state_rows != 0 && !self.step {
            return Err("state rows need the token-by-token form (step)".into());
        }
        if self.scan && (!self.split || self.step) {
            return Err("a chunk scan (scan) needs the split chunked form".into());
        }
        if !self.kv_split.is_multiple_of(self.block_k) || self.kv_split > MAX_KV_SPLIT {
            return Err(format!(
                "keys per split {} must be 0 (no split) or a multiple of the key block {} up to {MAX_KV_SPLIT}",
                self.kv_split, self.block_k
            ));
        }
        Ok(())
    }
}
