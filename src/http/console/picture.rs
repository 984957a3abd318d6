//! Timeline pictures, laid out here and drawn as SVG by `picture.html`: lanes down the side,
//! time across, bars (a step from its start to its end), dots (an alarm at its time) and
//! rules (an incident opened, a merge, the agent's start). Only geometry and labels: the
//! template escapes every label.

use serde::Serialize;

use crate::scheduling::domain::format_ms;

const WIDTH: f64 = 900.0;
const LEFT: f64 = 170.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 28.0;
/// Rule labels stack this far apart above the lanes, so two rules at one time both read.
const LABEL: f64 = 13.0;
const LANE: f64 = 26.0;
const BOTTOM: f64 = 34.0;

/// A laid-out picture.
#[derive(Debug, Clone, Serialize)]
pub struct Picture {
    pub title: String,
    pub width: f64,
    pub height: f64,
    pub lanes: Vec<Lane>,
    pub bars: Vec<Bar>,
    pub dots: Vec<Dot>,
    pub rules: Vec<Rule>,
    pub ticks: Vec<Tick>,
    /// Start and end of the time axis, as text.
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lane {
    pub y: f64,
    pub label: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub class: String,
    pub tip: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dot {
    pub x: f64,
    pub y: f64,
    pub class: String,
    pub tip: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub x: f64,
    /// Where its label sits (stacked, one row per rule).
    pub label_y: f64,
    pub label: String,
    pub class: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    pub x: f64,
    pub label: String,
}

/// What goes into a picture, in milliseconds; [`Builder::build`] lays it out.
#[derive(Default)]
pub struct Builder {
    lanes: Vec<String>,
    bars: Vec<(usize, i64, i64, String, String)>,
    dots: Vec<(usize, i64, String, String)>,
    rules: Vec<(i64, String, String)>,
}

impl Builder {
    /// The lane named `label`, added the first time it is named.
    pub fn lane(&mut self, label: &str) -> usize {
        match self.lanes.iter().position(|l| l == label) {
            Some(i) => i,
            None => {
                self.lanes.push(label.to_owned());
                self.lanes.len() - 1
            }
        }
    }

    /// How many lanes so far.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    pub fn has_lane(&self, label: &str) -> bool {
        self.lanes.iter().any(|l| l == label)
    }

    pub fn bar(&mut self, lane: usize, from_ms: i64, to_ms: i64, class: &str, tip: String) {
        self.bars
            .push((lane, from_ms, to_ms.max(from_ms), class.to_owned(), tip));
    }

    pub fn dot(&mut self, lane: usize, at_ms: i64, class: &str, tip: String) {
        self.dots.push((lane, at_ms, class.to_owned(), tip));
    }

    pub fn rule(&mut self, at_ms: i64, label: String, class: &str) {
        self.rules.push((at_ms, label, class.to_owned()));
    }

    pub fn build(self, title: &str) -> Picture {
        let times = self
            .bars
            .iter()
            .flat_map(|b| [b.1, b.2])
            .chain(self.dots.iter().map(|d| d.1))
            .chain(self.rules.iter().map(|r| r.0));
        let (lo, hi) = times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
        let (lo, hi) = if lo > hi {
            (0, 1)
        } else {
            (lo, hi.max(lo + 1))
        };
        let span = (hi - lo) as f64;
        let x = |t: i64| LEFT + (t - lo) as f64 / span * (WIDTH - LEFT - RIGHT);
        let top = TOP + LABEL * self.rules.len().saturating_sub(1) as f64;
        let y = |lane: usize| top + lane as f64 * LANE;
        let height = top + self.lanes.len().max(1) as f64 * LANE + BOTTOM;
        let ticks = (0..=4)
            .map(|i| {
                let t = lo + (hi - lo) * i / 4;
                Tick {
                    x: x(t),
                    label: offset_label(t - lo),
                }
            })
            .collect();
        Picture {
            title: title.to_owned(),
            width: WIDTH,
            height,
            lanes: self
                .lanes
                .iter()
                .enumerate()
                .map(|(i, label)| Lane {
                    y: y(i),
                    label: shorten(label),
                })
                .collect(),
            bars: self
                .bars
                .into_iter()
                .map(|(lane, from, to, class, tip)| Bar {
                    x: x(from),
                    y: y(lane),
                    w: (x(to) - x(from)).max(3.0),
                    class,
                    tip,
                })
                .collect(),
            dots: self
                .dots
                .into_iter()
                .map(|(lane, at, class, tip)| Dot {
                    x: x(at),
                    y: y(lane),
                    class,
                    tip,
                })
                .collect(),
            rules: self
                .rules
                .into_iter()
                .enumerate()
                .map(|(i, (at, label, class))| Rule {
                    x: x(at),
                    label_y: 12.0 + LABEL * i as f64,
                    label,
                    class,
                })
                .collect(),
            ticks,
            from: format_ms(lo),
            to: format_ms(hi),
        }
    }
}

/// A lane's label, cut to fit the left margin (the full name is in the rows below).
fn shorten(label: &str) -> String {
    const MAX: usize = 26;
    if label.chars().count() <= MAX {
        label.to_owned()
    } else {
        let mut s: String = label.chars().take(MAX - 1).collect();
        s.push('…');
        s
    }
}

/// `+1m 30s`-style offsets from the picture's start.
fn offset_label(ms: i64) -> String {
    if ms == 0 {
        return "0".into();
    }
    let d = std::time::Duration::from_millis(ms.max(0) as u64);
    let d = if d.as_secs() >= 60 {
        std::time::Duration::from_secs(d.as_secs())
    } else {
        d
    };
    format!("+{}", humantime::format_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_map_onto_the_width_in_order() {
        let mut b = Builder::default();
        let a = b.lane("a");
        let c = b.lane("c");
        assert_eq!(b.lane("a"), a);
        b.dot(a, 1_000, "alarm", "first".into());
        b.dot(c, 61_000, "alarm", "last".into());
        b.rule(31_000, "agent".into(), "agent");
        let p = b.build("t");
        assert_eq!(p.lanes.len(), 2);
        assert_eq!(p.dots[0].x, LEFT);
        assert_eq!(p.dots[1].x, WIDTH - RIGHT);
        assert!(p.rules[0].x > p.dots[0].x && p.rules[0].x < p.dots[1].x);
        assert_eq!(p.ticks.last().unwrap().label, "+1m");
    }
}
