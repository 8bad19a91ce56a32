//! The key pair of the sandbox's service accounts. It exists only to let the OAuth emulator
//! verify real RS256 JWTs signed by yup-oauth2; it grants access to nothing but the sandbox.

pub const PRIVATE_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDBaeVi8Qc01xcV\n\
boGXbrUjnUnMQ8boPTrnbmUCyDBGSDuUZaydQgZssxL2MD7x8KbhDQqvme8xnOK3\n\
NO3O9w9EkjNtRvZgyXqTYkL2D+Pi8GIAz+jPK8L4OAA+OTGSz+aROC1k7G2biB6i\n\
QH6uN8rfBatxnJNxmCuabJkheT6CWGgPnEAIbBIcdMUZmcDjivQ5j+8CsznT1egW\n\
GVWb0rKwUhwTOjFzDf4ruoXGk6chrCW+cRXGztFd2dP06+Zsy+p6C5zzZ4e4ffD7\n\
HZvhKSpp/PBA8vNhUtbrKhb7rHjy7UqyI+72YvvGBunf+7IryT4hSyV7OLYrnUXz\n\
lb/FCuJ3AgMBAAECggEAEBoQzrviLbP6Z/5bK5A75Esj6a160brHPJ0kK6ce3bsF\n\
usT8KdtlTYda/MPneZzfR70eNqBKGYdGGJp/cct/qeXCAkb2G/iqC7sSeAm6nxoE\n\
Dq1AZH7wLFn9KzD3v5EvUMesf8pvFZOveTKFWVuruAVw0HSIkdxpROHlnbPKUG+G\n\
rV8Dw8O5GtO+lwCMyOQiRaIODSgkSgYN2rAZlHcSyMKMIrhRSHcpA3EWK1i1IYpY\n\
sNKUiEPy5di0VYLr2D0Vu/R7AaIbq/Hrb62wSqWBuxeq6c1veXj59qKz5FRcR/q3\n\
3y694xssJLdFXppCrlzhJ0/hG2XVvo1DJ+Qg7YkpAQKBgQDflEFZKpBLOPquhl52\n\
k5M0NyIrl7pZdxVaJVyMUZvILxzYBCMWiBJLFRDQQH3LMCrcEbiVSnNyegCr/c14\n\
XyS+KeF4Tth87Ysdm6r4IY3G44EmFxn4RWIs/GEC5OHJdLGqTiCtgZy+k2W1FjLX\n\
OzIgPdPC28Dp2lsKF2tr+OmimQKBgQDdddU30L6lLHIjlYYvl/67zCxG1UkjE3Ib\n\
y0v535Rq403PcrqTv8uVT/7XeWAoyb2d+8UDWu09Ze5zH1FqhtpRbPbEQxlNswnA\n\
h48rPXVFd8dU+ukPzjfSfZTIr43Y9IU0kj9zqycebEalH2Kx/t/15yvquisrdGbw\n\
i36/EvnnjwKBgEw5GBpVF4J9t4EekD/uygXIMh8YiFCN97qW+DlibTDPVw8SQgAh\n\
fdMZKHVHN1u5XTNP21USX8+MZoQ8b/t0vGsUjijdAJN+zKnYc25KyjIfR917jMAG\n\
r5TUqiI5c/yhixybrCpbANw8FjWpjsWwCcPSMErDbr6LUfRbzaSu5MApAoGAc71g\n\
eLI84MAwys4begY62FUlksNnXNCN417FT0r9Gzu+b7urLQqg0GElc+F4UvjUg5uQ\n\
ZGeB84OxMjNc7oqZ0NJcyUe0ErqOTzPJrDSLdIncAFq9sUf6PqTpPFUbkhaBA2+n\n\
f8EkSa8W4Lddcl8dFzwA5MT1SNml7vNIg33cY5sCgYEAyZU9T0FtkdypHDNAgwmX\n\
D3eHYJiKdI9S7w/cKFMlffZ0O0PioHfw07Q7Fs1nrpROAHkK5IX5n0ju3p3WKg8e\n\
arajEuo97anX9Ak71aIIGUENNF9WNmxhjV240clb61OLTkiRH6/5Ggk+hU8lPhNH\n\
XFIl/VxP6qm1nYntDv584h0=\n\
-----END PRIVATE KEY-----\n\
";

/// PKCS#1 RSAPublicKey, DER, base64 (what `ring` verifies with).
pub const PUBLIC_KEY_DER_B64: &str = "MIIBCgKCAQEAwWnlYvEHNNcXFW6Bl261I51JzEPG6D06525lAsgwRkg7lGWsnUIGbLMS9jA+8fCm4Q0Kr5nvMZzitzTtzvcPRJIzbUb2YMl6k2JC9g/j4vBiAM/ozyvC+DgAPjkxks/mkTgtZOxtm4geokB+rjfK3wWrcZyTcZgrmmyZIXk+glhoD5xACGwSHHTFGZnA44r0OY/vArM509XoFhlVm9KysFIcEzoxcw3+K7qFxpOnIawlvnEVxs7RXdnT9OvmbMvqeguc82eHuH3w+x2b4SkqafzwQPLzYVLW6yoW+6x48u1KsiPu9mL7xgbp3/uyK8k+IUslezi2K51F85W/xQridwIDAQAB";
