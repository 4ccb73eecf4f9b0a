//! The template engine: minijinja in strict mode (an undefined variable is an error
//! naming file, line and variable, never a partial text), built-ins each overridable by
//! name from `data_path/templates`. What the templates are and what they render with
//! is [`crate::seeds`]' business.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use minijinja::{Environment, UndefinedBehavior, Value};

/// Directory of override templates inside `data_path`.
pub const TEMPLATES_DIR: &str = "templates";

/// Why a template could not be loaded or rendered. Every message names the file, the
/// line and, for a missing variable, the variable.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("reading templates from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: template `{template}` uses undefined variable `{variable}`")]
    Undefined {
        file: String,
        line: usize,
        template: String,
        variable: String,
    },
    #[error("{file}:{line}: template `{template}`: {reason}")]
    Template {
        file: String,
        line: usize,
        template: String,
        reason: String,
    },
    #[error("no template named `{0}`")]
    Unknown(String),
    #[error("host `{host}`: {error}")]
    ForHost {
        host: String,
        error: Box<TemplateError>,
    },
}

/// The template set: built-ins with overrides laid over them.
pub struct Templates {
    env: Environment<'static>,
    /// Template name → the file it came from (for error messages).
    files: BTreeMap<String, String>,
}

impl Templates {
    /// Only the built-in templates: `(name, text)` pairs.
    pub fn builtin(builtin: &[(&str, &str)]) -> Self {
        Self::from_sources(builtin_sources(builtin))
            .expect("built-in templates parse (unit-tested)")
    }

    /// Built-ins, with any `*.j2` file in `data_path/templates` replacing the built-in of
    /// the same name (or adding a new one).
    pub fn load(data_path: &Path, builtin: &[(&str, &str)]) -> Result<Self, TemplateError> {
        let mut sources: BTreeMap<String, (String, String)> = builtin_sources(builtin)
            .map(|(name, file, text)| (name, (file, text)))
            .collect();
        for path in override_files(&data_path.join(TEMPLATES_DIR))? {
            let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                path: path.clone(),
                source,
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            sources.insert(name, (path.display().to_string(), text));
        }
        Self::from_sources(
            sources
                .into_iter()
                .map(|(name, (file, text))| (name, file, text)),
        )
    }

    fn from_sources(
        sources: impl IntoIterator<Item = (String, String, String)>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // minijinja would JSON-escape `*.yaml.j2` output by name; seeds quote what they
        // mean to quote (`| tojson`) and print the rest as is.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters"),
        );
        env.add_filter("tojson", strict_tojson);
        env.add_filter("grub_path", grub_path);
        env.add_filter("grub_words", grub_words);
        let mut files = BTreeMap::new();
        for (name, file, text) in sources {
            files.insert(name.clone(), file.clone());
            env.add_template_owned(name.clone(), text)
                .map_err(|e| describe(&e, &name, &file))?;
        }
        Ok(Self { env, files })
    }

    /// Names of every template in the set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Renders template `name`; any undefined variable is an error, never a partial text.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let file = self
            .files
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| describe(&e, name, file))?;
        tmpl.render(ctx).map_err(|e| describe(&e, name, file))
    }

    /// Renders a template given inline (a profile's `cmdline`), `what` naming it in errors.
    pub fn render_str(
        &self,
        what: &str,
        source: &str,
        ctx: &Value,
    ) -> Result<String, TemplateError> {
        self.env
            .render_str(source, ctx)
            .map_err(|e| describe(&e, what, what))
    }
}

/// `(name, file named in errors, text)` of each built-in.
fn builtin_sources<'a>(
    builtin: &'a [(&'a str, &'a str)],
) -> impl Iterator<Item = (String, String, String)> + 'a {
    builtin.iter().map(|(name, text)| {
        (
            (*name).to_owned(),
            format!("built-in gb10-userspace/templates/{name}"),
            (*text).to_owned(),
        )
    })
}

/// The variable an undefined error points at. The span is the variable itself, or, when
/// a filter refused it (`password_hash | tojson`), the filter: then the variable is the
/// name before the `|`.
fn undefined_name(src: &str, range: std::ops::Range<usize>) -> Option<String> {
    let before = src.get(..range.start)?.trim_end();
    let name = match before.strip_suffix('|') {
        Some(expr) => {
            let expr = expr.trim_end();
            let start = expr
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |i| i + 1);
            &expr[start..]
        }
        None => src.get(range)?.trim(),
    };
    (!name.is_empty()).then(|| name.to_owned())
}

/// minijinja's `tojson`, except that an undefined value is an error: strict mode lets
/// filters see undefined values, and the built-in would quietly write `null` where a
/// required variable (a password hash) is missing.
fn strict_tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::UndefinedError,
            "undefined value passed to tojson",
        ));
    }
    minijinja::filters::tojson(value, indent, kwargs)
}

/// `http://host[:port]/path` as GRUB's `(http,host[:port])/path`; other text unchanged.
fn grub_path(url: &str) -> String {
    match url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((authority, path)) => format!("(http,{authority})/{path}"),
        None => url.to_owned(),
    }
}

/// Each word single-quoted, so GRUB passes `;`, `$` and the like to the kernel as written.
fn grub_words(text: &str) -> String {
    text.split_whitespace()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `*.j2` files in `dir`, sorted; none when the directory is absent.
pub fn override_files(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TemplateError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "j2") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A minijinja error as a [`TemplateError`] naming file, line and (when undefined) the
/// variable, which is the source text the error points at.
fn describe(err: &minijinja::Error, template: &str, file: &str) -> TemplateError {
    let line = err.line().unwrap_or(0);
    let source_range = err.template_source().zip(err.range());
    let snippet = source_range
        .clone()
        .and_then(|(src, range)| src.get(range))
        .map(|s| s.trim().to_owned());
    if err.kind() == minijinja::ErrorKind::UndefinedError {
        let variable = source_range
            .and_then(|(src, range)| undefined_name(src, range))
            .unwrap_or_else(|| "?".into());
        return TemplateError::Undefined {
            file: file.to_owned(),
            line,
            template: template.to_owned(),
            variable,
        };
    }
    let mut reason = err.kind().to_string();
    if let Some(detail) = err.detail() {
        reason = format!("{reason}: {detail}");
    }
    if let Some(s) = snippet {
        reason = format!("{reason} (at `{s}`)");
    }
    TemplateError::Template {
        file: file.to_owned(),
        line,
        template: template.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        let t = Templates::builtin(crate::seeds::BUILTIN);
        assert_eq!(t.names().count(), crate::seeds::BUILTIN.len());
    }

    #[test]
    fn undefined_variable_is_named_with_line() {
        let t = Templates::from_sources([(
            "x.j2".to_owned(),
            "/tmp/x.j2".to_owned(),
            "a\nb {{ disk_path }}\n".to_owned(),
        )])
        .unwrap();
        let err = t.render("x.j2", &Value::from(BTreeMap::<String, Value>::new()));
        let err = err.unwrap_err().to_string();
        assert!(err.contains("/tmp/x.j2:2"), "{err}");
        assert!(err.contains("`disk_path`"), "{err}");
        assert!(err.contains("x.j2"), "{err}");
    }

    #[test]
    fn tojson_of_undefined_is_an_error() {
        let t = Templates::from_sources([(
            "y.j2".to_owned(),
            "y.j2".to_owned(),
            "a: {{ password_hash | tojson }}\nb: {{ maybe | default([]) | tojson }}\n".to_owned(),
        )])
        .unwrap();
        let empty = Value::from(BTreeMap::<String, Value>::new());
        let err = t.render("y.j2", &empty).unwrap_err().to_string();
        assert!(
            err.contains("y.j2:1") && err.contains("`password_hash`"),
            "{err}"
        );
        let ctx = Value::from(BTreeMap::from([(
            "password_hash".to_owned(),
            Value::from("x"),
        )]));
        assert_eq!(t.render("y.j2", &ctx).unwrap(), "a: \"x\"\nb: []\n");
    }
}
