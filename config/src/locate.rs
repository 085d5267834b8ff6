//! Maps a field path (`route_tables[0].virtual_hosts[1].routes[3].match.prefix`) to the line and
//! column where it is written, so that errors found after deserialisation can point at the file.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A line and column, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Positions of every key and sequence item in one YAML document.
#[derive(Debug, Default)]
pub struct PositionIndex {
    positions: HashMap<String, Position>,
    /// Where scalar values are written (`address: 127.0.0.1:80` → the `1`).
    values: HashMap<String, Position>,
}

impl PositionIndex {
    /// Indexes `source`. A document that does not parse yields an empty index (the
    /// deserialiser reports the syntax error with its own location).
    pub fn build(source: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut builder, false).is_err() {
            return PositionIndex::default();
        }
        PositionIndex {
            positions: builder.positions,
            values: builder.values,
        }
    }

    /// The position of `path` — its value when that is a scalar, else its key — or of its
    /// nearest ancestor that is written in the file (a missing field is reported where its
    /// parent is).
    pub fn locate(&self, path: &str) -> Option<Position> {
        self.values
            .get(path)
            .copied()
            .or_else(|| self.locate_key(path))
    }

    /// The position of the key (or item) `path`, or of its nearest written ancestor.
    pub fn locate_key(&self, path: &str) -> Option<Position> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    /// In a mapping; `key` is the key whose value comes next, `None` while a key is expected.
    Map { key: Option<String> },
    /// In a sequence; the index of the next item.
    Seq { next: usize },
}

/// An open container: its path, and whether its position still waits for its first scalar
/// (container-start markers point past the first key, so a container is placed at its first
/// key or item instead).
struct Open {
    frame: Frame,
    path: String,
    pending: bool,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    positions: HashMap<String, Position>,
    values: HashMap<String, Position>,
}

impl Builder {
    /// Records the position of a scalar, and of any enclosing containers still waiting for one.
    fn place(&mut self, pos: Position) {
        for open in self.stack.iter_mut().rev() {
            if !open.pending {
                break;
            }
            open.pending = false;
            self.positions.entry(open.path.clone()).or_insert(pos);
        }
    }

    /// Handles a node; returns the path it occupies when it is a value (not a mapping key).
    fn node(&mut self, ev: &Event, mark: Marker) -> Option<String> {
        let pos = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        let is_scalar = matches!(ev, Event::Scalar(..) | Event::Alias(..));
        let Some(top) = self.stack.last_mut() else {
            return Some(String::new());
        };
        let parent = top.path.clone();
        let path = match &mut top.frame {
            Frame::Seq { next } => {
                let path = format!("{parent}[{next}]");
                *next += 1;
                path
            }
            Frame::Map { key } => match key.take() {
                Some(k) => join(&parent, &k),
                None => {
                    // This node is a key. Only scalar keys name fields.
                    let k = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => String::from("?"),
                    };
                    let path = join(&parent, &k);
                    *key = Some(k);
                    self.place(pos);
                    self.positions.entry(path).or_insert(pos);
                    return None;
                }
            },
        };
        if is_scalar {
            self.place(pos);
            self.positions.entry(path.clone()).or_insert(pos);
            self.values.insert(path.clone(), pos);
        }
        Some(path)
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                self.node(&ev, mark);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A container used as a mapping key gets a placeholder path; it never names a field.
                let path = self.node(&ev, mark).unwrap_or_else(|| "?".into());
                let pending = !self.positions.contains_key(&path);
                let frame = if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq { next: 0 }
                };
                self.stack.push(Open {
                    frame,
                    path,
                    pending,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
admin:
  address: 127.0.0.1:7191
route_tables:
  - name: main
    virtual_hosts:
      - name: a
        routes:
          - match: { prefix: / }
            cluster: x
";

    #[test]
    fn finds_keys_and_items() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(
            idx.locate("admin.address"),
            Some(Position {
                line: 2,
                column: 12
            })
        );
        assert_eq!(
            idx.locate_key("admin.address"),
            Some(Position { line: 2, column: 3 })
        );
        assert_eq!(
            idx.locate("route_tables[0]"),
            Some(Position { line: 4, column: 5 })
        );
        assert_eq!(
            idx.locate("route_tables[0].virtual_hosts[0].routes[0].match.prefix"),
            Some(Position {
                line: 8,
                column: 30
            })
        );
        assert_eq!(
            idx.locate("route_tables[0].virtual_hosts[0].routes[0].cluster"),
            Some(Position {
                line: 9,
                column: 22
            })
        );
    }

    #[test]
    fn missing_field_falls_back_to_parent() {
        let idx = PositionIndex::build(DOC);
        assert_eq!(
            idx.locate("route_tables[0].virtual_hosts[0].domains"),
            Some(Position { line: 6, column: 9 })
        );
    }

    #[test]
    fn broken_yaml_gives_empty_index() {
        let idx = PositionIndex::build("a: [b");
        assert_eq!(idx.locate("a"), None);
    }
}
