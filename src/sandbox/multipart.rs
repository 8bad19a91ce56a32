//! A strict reader of `multipart/form-data` bodies (RFC 7578), for the emulators' upload
//! endpoints: the boundary from the `Content-Type`, each part's name, file name, type and bytes.
//! A malformed body is refused whole, as a real server's parser would.

/// One field of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Vec<u8>,
}

/// The fields of `body`, or why it is not a multipart form.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let (essence, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !essence.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!("expected multipart/form-data, got '{}'", essence.trim()));
    }
    let boundary = params
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or("multipart/form-data without a boundary")?;
    let first = format!("--{boundary}\r\n");
    let mut rest = body.strip_prefix(first.as_bytes()).ok_or("the body does not start with its boundary")?;
    let delimiter = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    loop {
        let end = find(rest, delimiter.as_bytes()).ok_or("a part without a closing boundary")?;
        parts.push(part(&rest[..end])?);
        rest = &rest[end + delimiter.len()..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("a boundary not followed by a line break")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn part(raw: &[u8]) -> Result<Part, String> {
    let split = find(raw, b"\r\n\r\n").ok_or("a part without a blank line after its headers")?;
    let headers = std::str::from_utf8(&raw[..split]).map_err(|_| "a part's headers are not UTF-8")?;
    let (mut name, mut filename, mut content_type) = (None, None, None);
    for line in headers.split("\r\n") {
        let (key, value) = line.split_once(':').ok_or_else(|| format!("a malformed part header: {line:?}"))?;
        if key.trim().eq_ignore_ascii_case("content-disposition") {
            for param in value.split(';').skip(1) {
                if let Some((k, v)) = param.trim().split_once('=') {
                    let v = v.trim().trim_matches('"').to_string();
                    match k.trim() {
                        "name" => name = Some(v),
                        "filename" => filename = Some(v),
                        _ => {}
                    }
                }
            }
        } else if key.trim().eq_ignore_ascii_case("content-type") {
            content_type = Some(value.trim().to_string());
        }
    }
    Ok(Part { name: name.ok_or("a part without a name")?, filename, content_type, bytes: raw[split + 4..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_a_file() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"messaging_product\"\r\n\r\nwhatsapp\r\n--XY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF\r\n--\r\n--XY--\r\n";
        let parts = parse("multipart/form-data; boundary=XY", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].bytes, b"whatsapp");
        assert_eq!(parts[1].filename.as_deref(), Some("a.pdf"));
        assert_eq!(parts[1].content_type.as_deref(), Some("application/pdf"));
        assert_eq!(parts[1].bytes, b"%PDF\r\n--");
    }

    #[test]
    fn refuses_what_is_not_a_form() {
        assert!(parse("application/json", b"{}").is_err());
        assert!(parse("multipart/form-data", b"--X\r\n").is_err());
        assert!(parse(
            "multipart/form-data; boundary=X",
            b"--X\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv"
        )
        .is_err());
    }
}
