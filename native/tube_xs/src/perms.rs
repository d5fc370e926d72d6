//! Node permissions: `<access><domid>` strings such as `n0`, `r5`, `w7`, `b3` (Xen's
//! `xenstore_strings_to_perms`). The first entry names the owner and the access of every domain without an
//! entry of its own; later entries grant access per domain.

use crate::wire::XsError;

/// Largest domid accepted in a permission string (`<domid>` is 0..65535 on the wire).
pub const DOMID_MAX: u32 = 0xffff;

/// Access granted by one permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `n`: no access.
    None,
    /// `r`: read only.
    Read,
    /// `w`: write only.
    Write,
    /// `b`: read and write.
    Both,
}

impl Access {
    /// The access for its wire letter.
    pub fn from_letter(c: u8) -> Option<Access> {
        match c {
            b'n' => Some(Access::None),
            b'r' => Some(Access::Read),
            b'w' => Some(Access::Write),
            b'b' => Some(Access::Both),
            _ => None,
        }
    }

    /// The wire letter.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    /// True for `r` and `b`.
    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    /// True for `w` and `b`.
    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One permission entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// What is granted.
    pub access: Access,
    /// To whom (the owner, for the first entry of a list).
    pub domid: u32,
}

impl Perm {
    /// Parses one entry: an access letter then a decimal domid in `0..=DOMID_MAX`, nothing else.
    pub fn parse(s: &[u8]) -> Result<Perm, XsError> {
        let (&letter, digits) = s.split_first().ok_or(XsError::Einval)?;
        let access = Access::from_letter(letter).ok_or(XsError::Einval)?;
        if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
            return Err(XsError::Einval);
        }
        let domid = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if domid > u64::from(DOMID_MAX) {
            return Err(XsError::Einval);
        }
        Ok(Perm {
            access,
            domid: domid as u32,
        })
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// A node's permission list, never empty when built by [`PermList::parse`]: entry 0 is the owner and the
/// default access, later entries are per domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermList(pub Vec<Perm>);

impl PermList {
    /// The list of a fresh node owned by `domid` with no access for others (`n<domid>`).
    pub fn owned_by(domid: u32) -> PermList {
        PermList(vec![Perm {
            access: Access::None,
            domid,
        }])
    }

    /// Parses the permission fields of a payload (`["n0", "r5"]`). An empty list is `EINVAL`.
    pub fn parse(payload_fields: &[&[u8]]) -> Result<PermList, XsError> {
        if payload_fields.is_empty() {
            return Err(XsError::Einval);
        }
        payload_fields
            .iter()
            .map(|f| Perm::parse(f))
            .collect::<Result<_, _>>()
            .map(PermList)
    }

    /// Parses a human-written list: entries separated by commas and/or whitespace (`"n0,r5"`, `"n0 r5"`).
    pub fn parse_str(s: &str) -> Result<PermList, XsError> {
        let fields: Vec<&[u8]> = s
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|f| !f.is_empty())
            .map(str::as_bytes)
            .collect();
        PermList::parse(&fields)
    }

    /// The wire form: every entry followed by a NUL (`"n0\0r5\0"`).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend_from_slice(p.to_string().as_bytes());
            out.push(0);
        }
        out
    }

    /// The owning domain (0 for an empty list).
    pub fn owner(&self) -> u32 {
        self.0.first().map_or(0, |p| p.domid)
    }

    /// The access `domid` has: everything for the owner, else its own entry, else the default of entry 0.
    /// The control domain's privilege is the daemon's business, not decided here.
    pub fn access_for(&self, domid: u32) -> Access {
        let Some((first, rest)) = self.0.split_first() else {
            return Access::None;
        };
        if first.domid == domid {
            return Access::Both;
        }
        rest.iter()
            .find(|p| p.domid == domid)
            .map_or(first.access, |p| p.access)
    }

    /// True if `domid` may read.
    pub fn can_read(&self, domid: u32) -> bool {
        self.access_for(domid).can_read()
    }

    /// True if `domid` may write.
    pub fn can_write(&self, domid: u32) -> bool {
        self.access_for(domid).can_write()
    }
}

impl std::fmt::Display for PermList {
    /// Comma-separated, as [`PermList::parse_str`] reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
