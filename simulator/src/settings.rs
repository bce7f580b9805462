//! simulator settings: the common ones plus these (all delays in ms, before
//! scaling and jitter).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` / `HTTP_ADDR` | `8004` | health endpoints |
//! | `CPU_NICE` | `0` | normal priority; 1–19 makes the asynchronous work behind an order yield the CPU to order-svc and notify-svc on a shared host (`common::priority`) |
//! | `SIMULATOR_DELAY_SCALE` | `1.0` | multiplies every delay (`0.01` for tests and quick demos) |
//! | `SIM_JITTER` | `0.25` | each delay is multiplied by a random factor in `[1-j, 1+j]` |
//! | `SIM_CONFIRM_MS` | `2000` | order created → confirmed |
//! | `SIM_PREPARE_MS` | `3000` | confirmed → preparing |
//! | `SIM_DISPATCH_MS` | `4000` | preparing → out_for_delivery |
//! | `SIM_PICKUP_MS` | `3000` | delivery waiting_for_pickup → on_the_way |
//! | `SIM_DELIVER_MS` | `5000` | on_the_way → delivered |
//! | `SIM_POLL_MS` | `100` | longest wait between two looks at the timer set |
//! | `SIMULATOR_REJECT_RATE` | `0.0` | share of orders the kitchen refuses at the confirm step (0 to 1) |
//! | `SIMULATOR_SEED` | `1` | seed of the rejection draw: with the same seed the same orders are rejected |

use std::{net::SocketAddr, time::Duration};

use common::settings::{CommonSettings, Env, SettingsError, http_addr};

/// Everything the simulator reads at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared settings.
    pub common: CommonSettings,
    /// Listen address (health only).
    pub http_addr: SocketAddr,
    /// Nice value of the process (`CPU_NICE`, see `common::priority`).
    pub nice: i32,
    /// Delays.
    pub delays: Delays,
    /// Longest sleep of the timer loop.
    pub poll: Duration,
    /// What the kitchen refuses.
    pub kitchen: Kitchen,
}

/// The simulated kitchen's refusals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kitchen {
    /// Share of orders refused at the confirm step (0 to 1).
    pub reject_rate: f64,
    /// Seed of the per-order draw.
    pub seed: u64,
}

impl Kitchen {
    /// Whether the kitchen refuses `order` (bytes of its id), and why: the same
    /// answer for the same seed and order, however often it is asked.
    pub fn rejects(&self, order: [u8; 12]) -> Option<usize> {
        use rand::{Rng, SeedableRng};
        if self.reject_rate <= 0.0 {
            return None;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&order[4..12]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed ^ u64::from_le_bytes(id));
        let draw: f64 = rng.random();
        (draw < self.reject_rate).then(|| rng.random_range(0..3))
    }
}

/// The simulated world's pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delays {
    /// Multiplies every delay.
    pub scale: f64,
    /// Random spread, 0..=1.
    pub jitter: f64,
    /// Order steps: confirm, prepare, dispatch.
    pub order: [Duration; 3],
    /// Delivery steps: pick up, deliver.
    pub delivery: [Duration; 2],
}

impl Delays {
    /// A step's base delay, scaled and jittered.
    pub fn actual(&self, base: Duration) -> Duration {
        let j = self.jitter;
        let factor = if j > 0.0 {
            rand::random_range((1.0 - j)..=(1.0 + j))
        } else {
            1.0
        };
        base.mul_f64((self.scale * factor).max(0.0))
    }
}

impl Settings {
    /// Reads the environment through `env`.
    pub fn from_env(mut env: Env) -> Result<Self, SettingsError> {
        let common = CommonSettings::from_env(&mut env, "simulator");
        let delays = Delays {
            scale: env.parse("SIMULATOR_DELAY_SCALE", 1.0),
            jitter: env.parse("SIM_JITTER", 0.25),
            order: [
                env.millis("SIM_CONFIRM_MS", 2000),
                env.millis("SIM_PREPARE_MS", 3000),
                env.millis("SIM_DISPATCH_MS", 4000),
            ],
            delivery: [
                env.millis("SIM_PICKUP_MS", 3000),
                env.millis("SIM_DELIVER_MS", 5000),
            ],
        };
        env.check(
            delays.scale.is_finite() && delays.scale >= 0.0,
            "SIMULATOR_DELAY_SCALE must be a number >= 0",
        );
        env.check(
            (0.0..=1.0).contains(&delays.jitter),
            "SIM_JITTER must be between 0 and 1",
        );
        let poll = env.millis("SIM_POLL_MS", 100);
        env.check(!poll.is_zero(), "SIM_POLL_MS must be at least 1");
        let kitchen = Kitchen {
            reject_rate: env.parse("SIMULATOR_REJECT_RATE", 0.0),
            seed: env.parse("SIMULATOR_SEED", 1),
        };
        env.check(
            (0.0..=1.0).contains(&kitchen.reject_rate),
            "SIMULATOR_REJECT_RATE must be between 0 and 1",
        );
        let s = Self {
            common,
            http_addr: http_addr(&mut env, 8004),
            nice: common::priority::from_env(&mut env, 0),
            delays,
            poll,
            kitchen,
        };
        env.finish()?;
        Ok(s)
    }
}
