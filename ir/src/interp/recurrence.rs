//! The linear-recurrence family, token by token, exactly as MIXERS.md writes it.

use super::ops::log_sigmoid;
use super::tensor::Dense;
use crate::graph::TensorType;
use crate::ops::{OpKind, Recurrence, Transition};

pub(crate) fn eval(r: &Recurrence, a: &[&Dense], out: &[TensorType]) -> Result<Vec<Dense>, String> {
    let roles = OpKind::LinearRecurrence(*r).operand_roles(a.len());
    let get = |role: &str| roles.iter().position(|x| x == role).map(|i| a[i]);
    let (q, k, v) = (a[0], a[1], a[2]);
    let [b, t_len, h, dk] = q.sizes[..] else { return Err("q must have rank 4".into()) };
    let dv = v.sizes[3];
    let gate = get("gate");
    let beta = get("beta");
    let (igate, fgate) = (get("igate"), get("fgate"));
    let s0 = get("initial_state");
    let aux0 = get("initial_n").or(get("initial_z"));
    let m0 = get("initial_m");
    let key_gate = r.transition == Transition::KeyDecay;

    let mut o = vec![0.0; b * t_len * h * dv];
    let mut fs = vec![0.0; b * h * dk * dv];
    let mut fn_ = vec![0.0; b * h * dk];
    let mut fm = vec![0.0; b * h];
    let mut qs = vec![0.0; dk];
    for bi in 0..b {
        for hi in 0..h {
            let bh = bi * h + hi;
            let mut s: Vec<f64> = match s0 {
                Some(x) => x.data[bh * dk * dv..(bh + 1) * dk * dv].to_vec(),
                None => vec![0.0; dk * dv],
            };
            // Normalizer `n` (mLSTM) or `z` (normalized linear attention).
            let mut n: Vec<f64> = match aux0 {
                Some(x) => x.data[bh * dk..(bh + 1) * dk].to_vec(),
                None => vec![0.0; dk],
            };
            let mut m = m0.map(|x| x.data[bh]).unwrap_or(0.0);
            for t in 0..t_len {
                let row = (bi * t_len + t) * h + hi;
                let kt = &k.data[row * dk..(row + 1) * dk];
                let vt = &v.data[row * dv..(row + 1) * dv];
                for (d, x) in qs.iter_mut().enumerate() {
                    *x = r.scale * q.data[row * dk + d];
                }
                let mut write = 1.0;
                match r.transition {
                    Transition::Identity => {}
                    Transition::ScalarDecay | Transition::KeyDecay => {
                        let gt = gate.map(|x| &x.data[..]).unwrap_or(&[]);
                        for i in 0..dk {
                            let g = if key_gate { gt[row * dk + i] } else { gt[row] };
                            let decay = g.exp();
                            s[i * dv..(i + 1) * dv].iter_mut().for_each(|x| *x *= decay);
                        }
                    }
                    Transition::Delta | Transition::GatedDelta => {
                        if r.transition == Transition::GatedDelta {
                            let decay = gate.map(|x| x.data[row]).unwrap_or(0.0).exp();
                            s.iter_mut().for_each(|x| *x *= decay);
                        }
                        let bt = beta.map(|x| x.data[row]).unwrap_or(0.0);
                        // S += β k (v − Sᵀk)ᵀ
                        let mut u = vt.to_vec();
                        for i in 0..dk {
                            for j in 0..dv {
                                u[j] -= s[i * dv + j] * kt[i];
                            }
                        }
                        for i in 0..dk {
                            for j in 0..dv {
                                s[i * dv + j] += bt * kt[i] * u[j];
                            }
                        }
                        write = 0.0;
                    }
                    Transition::Mlstm => {
                        let it = igate.map(|x| x.data[row]).unwrap_or(0.0);
                        let lf = log_sigmoid(fgate.map(|x| x.data[row]).unwrap_or(0.0));
                        let m_new = (lf + m).max(it);
                        let f = (lf + m - m_new).exp();
                        write = (it - m_new).exp();
                        m = m_new;
                        s.iter_mut().for_each(|x| *x *= f);
                        n.iter_mut().for_each(|x| *x *= f);
                    }
                }
                if write != 0.0 {
                    for i in 0..dk {
                        let w = write * kt[i];
                        for j in 0..dv {
                            s[i * dv + j] += w * vt[j];
                        }
                    }
                }
                if r.normalize || r.transition == Transition::Mlstm {
                    for i in 0..dk {
                        n[i] += write * kt[i];
                    }
                }
                let denom = match (r.transition, r.normalize) {
                    (Transition::Mlstm, _) => {
                        let qn: f64 = qs.iter().zip(&n).map(|(a, b)| a * b).sum();
                        qn.abs().max((-m).exp()) + r.eps
                    }
                    (_, true) => qs.iter().zip(&n).map(|(a, b)| a * b).sum::<f64>() + r.eps,
                    _ => 1.0,
                };
                let oo = row * dv;
                for j in 0..dv {
                    let mut acc = 0.0;
                    for i in 0..dk {
                        acc += s[i * dv + j] * qs[i];
                    }
                    o[oo + j] = acc / denom;
                }
            }
            fs[bh * dk * dv..(bh + 1) * dk * dv].copy_from_slice(&s);
            fn_[bh * dk..(bh + 1) * dk].copy_from_slice(&n);
            fm[bh] = m;
        }
    }
    let mut res = vec![
        Dense { dims: out[0].shape.clone(), sizes: vec![b, t_len, h, dv], data: o },
        Dense { dims: out[1].shape.clone(), sizes: vec![b, h, dk, dv], data: fs },
    ];
    if r.transition == Transition::Mlstm {
        res.push(Dense { dims: out[2].shape.clone(), sizes: vec![b, h, dk], data: fn_ });
        res.push(Dense { dims: out[3].shape.clone(), sizes: vec![b, h], data: fm });
    } else if r.normalize {
        res.push(Dense { dims: out[2].shape.clone(), sizes: vec![b, h, dk], data: fn_ });
    }
    Ok(res)
}
