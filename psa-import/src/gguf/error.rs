//! Why a GGUF file could not be read: its layout, its tensor types, its vocabulary.

/// A malformed or unsupported GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file (no GGUF magic)")]
    Magic,
    /// A format version other than 2 or 3.
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    Version(u32),
    /// The file ends inside a field.
    #[error("truncated while reading {what} at byte {at}")]
    Truncated {
        /// The field.
        what: String,
        /// Its offset.
        at: usize,
    },
    /// A count that the remaining bytes cannot hold.
    #[error("{what} claims {claimed} items, more than the {left} bytes left")]
    Count {
        /// The counted field.
        what: String,
        /// The count as written.
        claimed: u64,
        /// Bytes left in the file.
        left: u64,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not UTF-8: {source}")]
    Utf8 {
        /// The field.
        what: String,
        /// The cause.
        #[source]
        source: std::string::FromUtf8Error,
    },
    /// A metadata value of an unknown type (or arrays nested too deeply).
    #[error("{what} has unknown value type {kind}")]
    ValueType {
        /// The metadata key.
        what: String,
        /// The type id.
        kind: u32,
    },
    /// A tensor of more than four dimensions.
    #[error("tensor {tensor} has {dims} dimensions")]
    Rank {
        /// The tensor.
        tensor: String,
        /// Its declared rank.
        dims: usize,
    },
    /// A tensor larger than any real one (or whose size overflows).
    #[error("tensor {tensor} has dimensions {dims:?}: more than {max} elements")]
    TooLarge {
        /// The tensor.
        tensor: String,
        /// Its declared dimensions.
        dims: Vec<u64>,
        /// The largest element count read.
        max: u64,
    },
    /// A tensor whose storage type cannot be read.
    #[error("tensor {tensor}: {source}")]
    Type {
        /// The tensor.
        tensor: String,
        /// The cause.
        #[source]
        source: GgmlTypeError,
    },
    /// Tensor descriptors that do not tile the data section: a duplicate name, an unaligned offset, bytes shared
    /// by two tensors, or unused bytes between them (a relabelled type or a shifted offset).
    #[error("tensor {tensor} {problem}")]
    Layout {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// An alignment that is not a power of two up to 2^20.
    #[error("general.alignment {0} is not a power of two up to 2^20")]
    Alignment(u64),
    /// A tensor whose bytes lie (partly) outside the file.
    #[error(
        "tensor {tensor} (offset {offset}, {len} bytes) does not lie within the file ({file_len} bytes): truncated or \
         corrupt"
    )]
    OutOfFile {
        /// The tensor.
        tensor: String,
        /// Its offset from the data section.
        offset: u64,
        /// Its size in bytes.
        len: usize,
        /// The file's size.
        file_len: usize,
    },
    /// The embedded vocabulary cannot make a tokenizer.
    #[error("{0}")]
    Tokenizer(#[from] GgufTokenizerError),
}

/// A ggml storage type this crate cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GgmlTypeError {
    /// An id the format no longer has.
    #[error("ggml type {0} was removed from the format")]
    Removed(u32),
    /// An id no ggml version has.
    #[error("unknown ggml type {0}")]
    Unknown(u32),
    /// A type this crate does not dequantise.
    #[error(
        "ggml type {0} is not supported; psa-vlm reads F32, F16, BF16, Q4_0, Q4_1 and Q8_0 (re-quantise the file with \
         llama.cpp's llama-quantize, e.g. to Q8_0)"
    )]
    Unsupported(u32),
    /// An element count that is not a whole number of blocks.
    #[error("{elements} elements is not a whole number of {block}-element blocks")]
    PartialBlock {
        /// Elements of the tensor.
        elements: usize,
        /// Elements per block.
        block: usize,
    },
}

/// Why the embedded vocabulary cannot make a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    /// A required metadata key is absent or of the wrong type.
    #[error("no {0}")]
    Missing(&'static str),
    /// A string array holds something else.
    #[error("{0} holds a non-string")]
    NotString(&'static str),
    /// A tokenizer model other than `gpt2` and `llama`.
    #[error("tokenizer.ggml.model {0:?} is not supported (gpt2 and llama are)")]
    Model(String),
    /// The BOS id is not in the vocabulary.
    #[error("bos_token_id {0} is out of range")]
    Bos(u64),
    /// The `tokenizers` crate refused the tokenizer built from the vocabulary.
    #[error("building the tokenizer: {0}")]
    Build(#[source] tokenizers::Error),
}
