//! Message types with Xen's numbers (`enum xsd_sockmsg_type`).

/// Message types with Xen's numbers. 20 was `XS_RESTRICT` and is no longer valid; `Invalid` (0xffff) is
/// guaranteed never to be supported.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// `XS_CONTROL` (alias `XS_DEBUG`): implementation-specific control commands.
    Control = 0,
    /// `XS_DIRECTORY`: `<path>|` -> `<child>|*`.
    Directory = 1,
    /// `XS_READ`: `<path>|` -> `<value|>`.
    Read = 2,
    /// `XS_GET_PERMS`: `<path>|` -> `<perm>|+`.
    GetPerms = 3,
    /// `XS_WATCH`: `<wpath>|<token>|[<depth>|]`.
    Watch = 4,
    /// `XS_UNWATCH`: `<wpath>|<token>|`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`: `|` -> `<transid>|`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`: `T|` or `F|`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`: `<domid>|<gfn>|<evtchn>|`.
    Introduce = 8,
    /// `XS_RELEASE`: `<domid>|`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`: `<domid>|` -> `<path>|`.
    GetDomainPath = 10,
    /// `XS_WRITE`: `<path>|<value|>`.
    Write = 11,
    /// `XS_MKDIR`: `<path>|`.
    Mkdir = 12,
    /// `XS_RM`: `<path>|`.
    Rm = 13,
    /// `XS_SET_PERMS`: `<path>|<perm>|+`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT`: unsolicited `<epath>|<token>|`, only from the daemon.
    WatchEvent = 15,
    /// `XS_ERROR`: `E<name>|`, only from the daemon.
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`: `<domid>|` -> `T|` or `F|`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`: `<domid>|`.
    Resume = 18,
    /// `XS_SET_TARGET`: `<domid>|<tdomid>|`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`: `|`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`: `<path>|<offset>|` -> `<gencnt>|<child>|*` (see [`super::DirectoryPart`]).
    DirectoryPart = 22,
    /// `XS_GET_FEATURE`: `[<domid>|]` -> `<value>|`.
    GetFeature = 23,
    /// `XS_SET_FEATURE`: `<domid>|<value>|`.
    SetFeature = 24,
    /// `XS_GET_QUOTA`: `[[<domid>|]<quota>|]` -> `<value>|`.
    GetQuota = 25,
    /// `XS_SET_QUOTA`: `[<domid>|]<quota>|<value>|`.
    SetQuota = 26,
    /// `XS_INVALID`: never supported.
    Invalid = 0xffff,
}

const ALL: [MsgType; 27] = [
    MsgType::Control,
    MsgType::Directory,
    MsgType::Read,
    MsgType::GetPerms,
    MsgType::Watch,
    MsgType::Unwatch,
    MsgType::TransactionStart,
    MsgType::TransactionEnd,
    MsgType::Introduce,
    MsgType::Release,
    MsgType::GetDomainPath,
    MsgType::Write,
    MsgType::Mkdir,
    MsgType::Rm,
    MsgType::SetPerms,
    MsgType::WatchEvent,
    MsgType::Error,
    MsgType::IsDomainIntroduced,
    MsgType::Resume,
    MsgType::SetTarget,
    MsgType::ResetWatches,
    MsgType::DirectoryPart,
    MsgType::GetFeature,
    MsgType::SetFeature,
    MsgType::GetQuota,
    MsgType::SetQuota,
    MsgType::Invalid,
];

impl MsgType {
    /// Every defined type, `Invalid` last.
    pub const ALL: [MsgType; 27] = ALL;

    /// The type with number `v`, or `None` for numbers Xen does not define (20, 27.., except 0xffff).
    pub fn from_u32(v: u32) -> Option<MsgType> {
        ALL.iter().copied().find(|t| *t as u32 == v)
    }

    /// Xen's name for the type, e.g. `"XS_READ"`.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Control => "XS_CONTROL",
            MsgType::Directory => "XS_DIRECTORY",
            MsgType::Read => "XS_READ",
            MsgType::GetPerms => "XS_GET_PERMS",
            MsgType::Watch => "XS_WATCH",
            MsgType::Unwatch => "XS_UNWATCH",
            MsgType::TransactionStart => "XS_TRANSACTION_START",
            MsgType::TransactionEnd => "XS_TRANSACTION_END",
            MsgType::Introduce => "XS_INTRODUCE",
            MsgType::Release => "XS_RELEASE",
            MsgType::GetDomainPath => "XS_GET_DOMAIN_PATH",
            MsgType::Write => "XS_WRITE",
            MsgType::Mkdir => "XS_MKDIR",
            MsgType::Rm => "XS_RM",
            MsgType::SetPerms => "XS_SET_PERMS",
            MsgType::WatchEvent => "XS_WATCH_EVENT",
            MsgType::Error => "XS_ERROR",
            MsgType::IsDomainIntroduced => "XS_IS_DOMAIN_INTRODUCED",
            MsgType::Resume => "XS_RESUME",
            MsgType::SetTarget => "XS_SET_TARGET",
            MsgType::ResetWatches => "XS_RESET_WATCHES",
            MsgType::DirectoryPart => "XS_DIRECTORY_PART",
            MsgType::GetFeature => "XS_GET_FEATURE",
            MsgType::SetFeature => "XS_SET_FEATURE",
            MsgType::GetQuota => "XS_GET_QUOTA",
            MsgType::SetQuota => "XS_SET_QUOTA",
            MsgType::Invalid => "XS_INVALID",
        }
    }

    /// True for the types only the daemon may send (`XS_WATCH_EVENT`, `XS_ERROR`) and for `XS_INVALID`.
    pub fn is_reply_only(self) -> bool {
        matches!(
            self,
            MsgType::WatchEvent | MsgType::Error | MsgType::Invalid
        )
    }
}

impl std::fmt::Display for MsgType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_xs_wire_h() {
        let expect: [(u32, &str); 27] = [
            (0, "XS_CONTROL"),
            (1, "XS_DIRECTORY"),
            (2, "XS_READ"),
            (3, "XS_GET_PERMS"),
            (4, "XS_WATCH"),
            (5, "XS_UNWATCH"),
            (6, "XS_TRANSACTION_START"),
            (7, "XS_TRANSACTION_END"),
            (8, "XS_INTRODUCE"),
            (9, "XS_RELEASE"),
            (10, "XS_GET_DOMAIN_PATH"),
            (11, "XS_WRITE"),
            (12, "XS_MKDIR"),
            (13, "XS_RM"),
            (14, "XS_SET_PERMS"),
            (15, "XS_WATCH_EVENT"),
            (16, "XS_ERROR"),
            (17, "XS_IS_DOMAIN_INTRODUCED"),
            (18, "XS_RESUME"),
            (19, "XS_SET_TARGET"),
            (21, "XS_RESET_WATCHES"),
            (22, "XS_DIRECTORY_PART"),
            (23, "XS_GET_FEATURE"),
            (24, "XS_SET_FEATURE"),
            (25, "XS_GET_QUOTA"),
            (26, "XS_SET_QUOTA"),
            (0xffff, "XS_INVALID"),
        ];
        for (n, name) in expect {
            let t = MsgType::from_u32(n).unwrap_or_else(|| panic!("{n} missing"));
            assert_eq!(t as u32, n);
            assert_eq!(t.name(), name);
        }
    }

    #[test]
    fn undefined_numbers_are_none() {
        for n in [20, 27, 28, 100, 0xfffe, 0x1_0000, u32::MAX] {
            assert_eq!(MsgType::from_u32(n), None, "{n}");
        }
    }
}
