//! Generated gRPC contracts. One module per versioned package.

pub mod storage {
    pub mod v1 {
        tonic::include_proto!("iot.storage.v1");
    }
}

pub mod session {
    pub mod v1 {
        tonic::include_proto!("iot.session.v1");
    }
}

/// Encoded `FileDescriptorSet` of every package, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("iot_descriptor");
