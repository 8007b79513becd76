//! Server-side optimizers for sparse gradient pushes.
//!
//! Each update mirrors, operation for operation in float32, its PyTorch counterpart on an
//! `nn.Embedding(sparse=True)`: `SGD`, `Adagrad` and `SparseAdam`. Row-wise Adagrad (one
//! accumulator per row, FBGEMM's `rowwise_adagrad`) keeps the mean squared gradient of the
//! row. State lives in a companion table of `state_dim` float32 columns per row.
//!
//! Weight decay is PyTorch's (coupled, L2) form: `grad + weight_decay * row` takes the
//! gradient's place in the update, on the rows a push touches (as `torch.optim.SGD`,
//! `Adagrad` and `Adam` apply it; PyTorch's `SparseAdam` has none).

use crate::error::{Error, Result};
use crate::init::Initializer;

/// Per-step values of an update; see [`Optimizer::at_step`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepConstants {
    adam_step_size: f32,
    weight_decay: f32,
}

impl StepConstants {
    /// These constants with `weight_decay` (see [`check_weight_decay`]).
    pub fn with_weight_decay(self, weight_decay: f32) -> StepConstants {
        StepConstants {
            weight_decay,
            ..self
        }
    }
}

/// A weight decay must be finite and non-negative.
pub fn check_weight_decay(weight_decay: f32) -> Result<()> {
    check(
        "weight_decay",
        weight_decay,
        weight_decay >= 0.0,
        "non-negative",
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd {
        lr: f32,
    },
    Adagrad {
        lr: f32,
        eps: f32,
        initial_accumulator_value: f32,
    },
    RowWiseAdagrad {
        lr: f32,
        eps: f32,
    },
    Adam {
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
    },
}

fn check(name: &str, value: f32, valid: bool, rule: &str) -> Result<()> {
    if value.is_finite() && valid {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{name} must be {rule}, got {value}"
        )))
    }
}

impl Optimizer {
    pub const NAMES: [&'static str; 4] = ["sgd", "adagrad", "rowwise_adagrad", "adam"];

    /// Builds and validates an optimizer from its name and hyper-parameters.
    pub fn new(
        name: &str,
        lr: f32,
        eps: f32,
        beta1: f32,
        beta2: f32,
        initial_accumulator_value: f32,
    ) -> Result<Self> {
        check("lr", lr, lr > 0.0, "positive")?;
        let optimizer = match name {
            "sgd" => Optimizer::Sgd { lr },
            "adagrad" => Optimizer::Adagrad {
                lr,
                eps,
                initial_accumulator_value,
            },
            "rowwise_adagrad" => Optimizer::RowWiseAdagrad { lr, eps },
            "adam" => Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            },
            other => {
                return Err(Error::invalid(format!(
                    "optimizer must be one of {:?}, got {other:?}",
                    Self::NAMES
                )))
            }
        };
        if name != "sgd" {
            check("eps", eps, eps >= 0.0, "non-negative")?;
        }
        if name == "adagrad" {
            let v = initial_accumulator_value;
            check("initial_accumulator_value", v, v >= 0.0, "non-negative")?;
        }
        if name == "adam" {
            check("beta1", beta1, (0.0..1.0).contains(&beta1), "in [0, 1)")?;
            check("beta2", beta2, (0.0..1.0).contains(&beta2), "in [0, 1)")?;
        }
        Ok(optimizer)
    }

    pub fn lr(&self) -> f32 {
        match *self {
            Optimizer::Sgd { lr }
            | Optimizer::Adagrad { lr, .. }
            | Optimizer::RowWiseAdagrad { lr, .. }
            | Optimizer::Adam { lr, .. } => lr,
        }
    }

    /// This optimizer with learning rate `lr` (its state stays valid: only the step size
    /// changes).
    pub fn with_lr(self, lr: f32) -> Result<Self> {
        check("lr", lr, lr > 0.0, "positive")?;
        Ok(match self {
            Optimizer::Sgd { .. } => Optimizer::Sgd { lr },
            Optimizer::Adagrad {
                eps,
                initial_accumulator_value,
                ..
            } => Optimizer::Adagrad {
                lr,
                eps,
                initial_accumulator_value,
            },
            Optimizer::RowWiseAdagrad { eps, .. } => Optimizer::RowWiseAdagrad { lr, eps },
            Optimizer::Adam {
                beta1, beta2, eps, ..
            } => Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            },
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Adagrad { .. } => "adagrad",
            Optimizer::RowWiseAdagrad { .. } => "rowwise_adagrad",
            Optimizer::Adam { .. } => "adam",
        }
    }

    /// Float32 state columns per row for rows of width `dim`.
    pub fn state_dim(&self, dim: usize) -> usize {
        match self {
            Optimizer::Sgd { .. } => 0,
            Optimizer::Adagrad { .. } => dim,
            Optimizer::RowWiseAdagrad { .. } => 1,
            Optimizer::Adam { .. } => 2 * dim,
        }
    }

    /// What never-touched state rows read as.
    pub fn state_initializer(&self) -> Initializer {
        match *self {
            Optimizer::Adagrad {
                initial_accumulator_value,
                ..
            } => Initializer::Constant(initial_accumulator_value),
            _ => Initializer::Zeros,
        }
    }

    /// Applies one step's gradient to a row and its state. `step` counts from 1 and drives
    /// Adam's bias correction.
    pub fn apply(&self, param: &mut [f32], state: &mut [f32], grad: &[f32], step: u64) {
        self.apply_at(&self.at_step(step), param, state, grad);
    }

    /// What an update of step `step` needs beyond the row: computed once per push, not per
    /// row (Adam's bias correction takes two `powf`, dearer than the row update itself).
    pub fn at_step(&self, step: u64) -> StepConstants {
        let adam_step_size = match *self {
            Optimizer::Adam {
                lr, beta1, beta2, ..
            } => {
                let step = step.max(1) as f64;
                let bias_correction1 = 1.0 - f64::from(beta1).powf(step);
                let bias_correction2 = 1.0 - f64::from(beta2).powf(step);
                (f64::from(lr) * bias_correction2.sqrt() / bias_correction1) as f32
            }
            _ => 0.0,
        };
        StepConstants {
            adam_step_size,
            weight_decay: 0.0,
        }
    }

    /// [`Optimizer::apply`] with the step's constants already computed.
    pub fn apply_at(
        &self,
        constants: &StepConstants,
        param: &mut [f32],
        state: &mut [f32],
        grad: &[f32],
    ) {
        // Without decay the gradient is used as it is (not `g + 0 * p`, which an infinite
        // row would turn into NaN).
        if constants.weight_decay == 0.0 {
            self.update::<false>(constants, param, state, grad)
        } else {
            self.update::<true>(constants, param, state, grad)
        }
    }

    fn update<const DECAY: bool>(
        &self,
        constants: &StepConstants,
        param: &mut [f32],
        state: &mut [f32],
        grad: &[f32],
    ) {
        let wd = constants.weight_decay;
        let decayed = |g: f32, p: f32| if DECAY { g + wd * p } else { g };
        match *self {
            Optimizer::Sgd { lr } => {
                for (p, &g) in param.iter_mut().zip(grad) {
                    *p += -lr * decayed(g, *p);
                }
            }
            Optimizer::Adagrad { lr, eps, .. } => {
                for ((p, s), &g) in param.iter_mut().zip(state.iter_mut()).zip(grad) {
                    let g = decayed(g, *p);
                    *s += g * g;
                    *p += -lr * (g / (s.sqrt() + eps));
                }
            }
            Optimizer::RowWiseAdagrad { lr, eps } => {
                let sum_square: f32 = param
                    .iter()
                    .zip(grad)
                    .map(|(&p, &g)| decayed(g, p) * decayed(g, p))
                    .sum();
                state[0] += sum_square / grad.len() as f32;
                let scale = -lr / (state[0].sqrt() + eps);
                for (p, &g) in param.iter_mut().zip(grad) {
                    *p += scale * decayed(g, *p);
                }
            }
            Optimizer::Adam {
                beta1, beta2, eps, ..
            } => {
                let step_size = constants.adam_step_size;
                let (exp_avg, exp_avg_sq) = state.split_at_mut(param.len());
                for (((p, m), v), &g) in param
                    .iter_mut()
                    .zip(exp_avg.iter_mut())
                    .zip(exp_avg_sq.iter_mut())
                    .zip(grad)
                {
                    let g = decayed(g, *p);
                    let m_update = (g - *m) * (1.0 - beta1);
                    let v_update = (g * g - *v) * (1.0 - beta2);
                    let numer = m_update + *m;
                    let denom = (v_update + *v).sqrt() + eps;
                    *m += m_update;
                    *v += v_update;
                    *p += -step_size * (numer / denom);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_hyper_parameter() {
        let err = |r: Result<Optimizer>| r.unwrap_err().to_string();
        assert!(
            err(Optimizer::new("sgd", 0.0, 0.0, 0.9, 0.99, 0.0)).contains("lr must be positive")
        );
        assert!(err(Optimizer::new("adam", 0.1, 1e-8, 1.0, 0.99, 0.0)).contains("beta1"));
        assert!(err(Optimizer::new("adagrad", 0.1, -1.0, 0.9, 0.99, 0.0)).contains("eps"));
        assert!(err(Optimizer::new("lamb", 0.1, 0.0, 0.9, 0.99, 0.0)).contains("optimizer must be"));
        assert!(err(Optimizer::new("sgd", f32::NAN, 0.0, 0.9, 0.99, 0.0)).contains("lr"));
    }

    #[test]
    fn sgd_and_adagrad_follow_their_formulas() {
        let sgd = Optimizer::new("sgd", 0.5, 0.0, 0.0, 0.0, 0.0).unwrap();
        let mut p = [1.0f32, 2.0];
        sgd.apply(&mut p, &mut [], &[2.0, -4.0], 1);
        assert_eq!(p, [0.0, 4.0]);

        let adagrad = Optimizer::new("adagrad", 0.1, 0.0, 0.0, 0.0, 1.0).unwrap();
        let mut p = [1.0f32];
        let mut s = [1.0f32];
        adagrad.apply(&mut p, &mut s, &[3.0], 1);
        assert_eq!(s, [10.0]);
        assert!((p[0] - (1.0 - 0.1 * 3.0 / 10f32.sqrt())).abs() < 1e-7);
    }

    #[test]
    fn rowwise_adagrad_keeps_one_accumulator() {
        let opt = Optimizer::new("rowwise_adagrad", 1.0, 0.0, 0.0, 0.0, 0.0).unwrap();
        assert_eq!(opt.state_dim(8), 1);
        let mut p = [0.0f32, 0.0];
        let mut s = [0.0f32];
        opt.apply(&mut p, &mut s, &[3.0, 4.0], 1);
        assert_eq!(s, [12.5]);
        let scale = 1.0 / 12.5f32.sqrt();
        assert_eq!(p, [-3.0 * scale, -4.0 * scale]);
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        // With zero state, bias-corrected Adam's first step is lr * g / (|g| + eps').
        let opt = Optimizer::new("adam", 0.01, 0.0, 0.9, 0.999, 0.0).unwrap();
        let mut p = [0.0f32, 0.0];
        let mut s = [0.0f32; 4];
        opt.apply(&mut p, &mut s, &[2.0, -0.5], 1);
        assert!(
            (p[0] + 0.01).abs() < 1e-6 && (p[1] - 0.01).abs() < 1e-6,
            "{p:?}"
        );
        assert!(
            (s[0] - 0.2).abs() < 1e-6 && (s[2] - 0.004).abs() < 1e-6,
            "{s:?}"
        );
    }

    #[test]
    fn weight_decay_adds_the_decayed_row_to_the_gradient() {
        let decayed = |opt: Optimizer, p: f32, state: &mut [f32]| {
            let mut row = [p];
            let constants = opt.at_step(1).with_weight_decay(0.2);
            opt.apply_at(&constants, &mut row, state, &[0.5]);
            row[0]
        };
        let sgd = Optimizer::new("sgd", 0.1, 0.0, 0.0, 0.0, 0.0).unwrap();
        assert_eq!(decayed(sgd, 1.0, &mut []), 1.0 - 0.1 * (0.5 + 0.2 * 1.0));
        // Adagrad accumulates the decayed gradient's square.
        let adagrad = Optimizer::new("adagrad", 0.1, 0.0, 0.0, 0.0, 0.0).unwrap();
        let mut sum = [0.0f32];
        let moved = decayed(adagrad, 1.0, &mut sum);
        assert!((sum[0] - 0.49).abs() < 1e-6 && (moved - 0.9).abs() < 1e-6);
        // Without decay an infinite row stays infinite (no 0 * inf).
        let mut row = [f32::INFINITY];
        sgd.apply(&mut row, &mut [], &[0.5], 1);
        assert_eq!(row[0], f32::INFINITY);
    }

    #[test]
    fn a_new_learning_rate_keeps_the_rest() {
        let adam = Optimizer::new("adam", 0.1, 1e-8, 0.9, 0.999, 0.0).unwrap();
        let faster = adam.with_lr(0.5).unwrap();
        assert_eq!(faster.lr(), 0.5);
        assert_eq!(
            faster,
            Optimizer::new("adam", 0.5, 1e-8, 0.9, 0.999, 0.0).unwrap()
        );
        assert!(adam
            .with_lr(0.0)
            .unwrap_err()
            .to_string()
            .contains("lr must be positive"));
        assert!(check_weight_decay(-1.0).is_err() && check_weight_decay(f32::NAN).is_err());
    }
}
