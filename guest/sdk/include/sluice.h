/*
 * sluice.h - the Sluice hypercall ABI, version 1, for C programs running
 * in a Sluice partition (shared/design/ABI.md), and Sluice's partition
 * start-up contract (StartInfo, guest-physical layout).
 *
 * The same contract as the Rust crate sluice-abi (abi/): every size,
 * offset and constant here is compared with it by a host test
 * (guest/sdk/tests/c_header.rs). Little-endian, LP64 (x86_64, aarch64).
 *
 * Calling convention:
 *   x86_64:  VMMCALL, rax = nr, rdi = GPA of the command struct;
 *            returns rax = 0 or -errno; no other register changes.
 *   aarch64: HVC #0, x0 = 0xC6000000 | nr, x1 = GPA of the command struct;
 *            returns x0 = 0 or -errno; x1..x3 clobbered.
 * The partition runs identity mapped (GPA = VA), so a struct's address is
 * its GPA.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define SLUICE_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define SLUICE_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#define SLUICE_ABI_VERSION 1

/* aarch64 SMCCC function id base (fast call, SMC64, owner 6). */
#define SLUICE_SMCCC_BASE 0xC6000000u
/* What an unknown function id returns on aarch64. */
#define SLUICE_SMCCC_NOT_SUPPORTED (-1)

/* Command numbers. */
#define SLUICE_DESTROY 0x80u
#define SLUICE_IOAS_ALLOC 0x81u
#define SLUICE_IOAS_ALLOW_IOVAS 0x82u
#define SLUICE_IOAS_COPY 0x83u
#define SLUICE_IOAS_IOVA_RANGES 0x84u
#define SLUICE_IOAS_MAP 0x85u
#define SLUICE_IOAS_UNMAP 0x86u
#define SLUICE_OPTION 0x87u
#define SLUICE_GET_HW_INFO 0x8Au
#define SLUICE_DEVICE_LIST 0xC0u
#define SLUICE_DEVICE_ATTACH 0xC1u
#define SLUICE_DEVICE_DETACH 0xC2u
#define SLUICE_DEVICE_RESV_IOVA_RANGES 0xC3u
#define SLUICE_FAULT_READ 0xC4u
#define SLUICE_CONSOLE_WRITE 0xC5u
#define SLUICE_PARTITION_EXIT 0xC6u

/* Errnos (Linux's); a hypercall returns -errno. */
#define SLUICE_EPERM 1
#define SLUICE_ENOENT 2
#define SLUICE_EIO 5
#define SLUICE_E2BIG 7
#define SLUICE_ENOMEM 12
#define SLUICE_EFAULT 14
#define SLUICE_EBUSY 16
#define SLUICE_EEXIST 17
#define SLUICE_ENODEV 19
#define SLUICE_EINVAL 22
#define SLUICE_ENOTTY 25
#define SLUICE_ENOSPC 28
#define SLUICE_EOVERFLOW 75
#define SLUICE_EMSGSIZE 90
#define SLUICE_EOPNOTSUPP 95
#define SLUICE_EADDRINUSE 98

/* IOAS_MAP and IOAS_COPY flags. */
#define SLUICE_MAP_FIXED_IOVA (1u << 0)
#define SLUICE_MAP_WRITEABLE (1u << 1)
#define SLUICE_MAP_READABLE (1u << 2)

/* OPTION ids and ops. */
#define SLUICE_OPTION_RLIMIT_MODE 0u
#define SLUICE_OPTION_HUGE_PAGES 1u
#define SLUICE_OPTION_OP_SET 0u
#define SLUICE_OPTION_OP_GET 1u

/* GET_HW_INFO data types. */
#define SLUICE_HW_INFO_TYPE_INTEL_VTD 1u
#define SLUICE_HW_INFO_TYPE_ARM_SMMUV3 2u

/* fault_record.reason and .flags. */
#define SLUICE_FAULT_NOT_PRESENT 1u
#define SLUICE_FAULT_WRITE_TO_READ_ONLY 2u
#define SLUICE_FAULT_READ_FROM_WRITE_ONLY 3u
#define SLUICE_FAULT_OTHER 4u
#define SLUICE_FAULT_FLAG_READ 1u
#define SLUICE_FAULT_FLAG_WRITE 2u
#define SLUICE_FAULT_FLAG_BUS_MASTER_OFF 0x80000000u /* reason OTHER, iova 0: the device was quarantined */

/* resv_range.type. */
#define SLUICE_RESV_MSI 1u
#define SLUICE_RESV_DIRECT 2u
#define SLUICE_RESV_APERTURE 3u
#define SLUICE_RESV_DMA_LIMIT 4u
#define SLUICE_RESV_RESERVED 5u

/* The largest CONSOLE_WRITE len (more is EINVAL). */
#define SLUICE_CONSOLE_WRITE_MAX 4096u

/* Start info: magic is the bytes "SLS1". */
#define SLUICE_START_INFO_MAGIC 0x31534C53u
#define SLUICE_START_INFO_VERSION 1u
#define SLUICE_START_MAX_DEVICES 8
#define SLUICE_START_NAME_LEN 32

/* Guest-physical layout of a partition (sluice_abi::layout). */
#define SLUICE_RAM_BASE 0x40000000ull
#define SLUICE_RAM_ALIGN 0x200000ull
#define SLUICE_RAM_MIN_SIZE 0x400000ull
#define SLUICE_RAM_MAX_SIZE 0x40000000ull
#define SLUICE_START_INFO_GPA 0x40001000ull
#define SLUICE_PAGE_TABLES_GPA 0x40010000ull
#define SLUICE_PAGE_TABLES_END_GPA 0x40020000ull
#define SLUICE_STACK_BOTTOM_GPA 0x40020000ull
#define SLUICE_STACK_TOP_GPA 0x40200000ull
#define SLUICE_IMAGE_BASE_GPA 0x40200000ull

/* struct iova_range: an inclusive range. */
struct sluice_iova_range {
	uint64_t start;
	uint64_t last;
};

/* 0x80 DESTROY */
struct sluice_destroy {
	uint32_t size;
	uint32_t id;
};

/* 0x81 IOAS_ALLOC */
struct sluice_ioas_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_ioas_id;
};

/* 0x82 IOAS_ALLOW_IOVAS */
struct sluice_ioas_allow_iovas {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas;
	uint32_t __reserved;
	uint64_t allowed_iovas; /* GPA of struct sluice_iova_range[num_iovas] */
};

/* 0x83 IOAS_COPY */
struct sluice_ioas_copy {
	uint32_t size;
	uint32_t flags;
	uint32_t dst_ioas_id;
	uint32_t src_ioas_id;
	uint64_t length;
	uint64_t dst_iova; /* in with FIXED_IOVA, out */
	uint64_t src_iova;
};

/* 0x84 IOAS_IOVA_RANGES */
struct sluice_ioas_iova_ranges {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas; /* in: array length, out: total */
	uint32_t __reserved;
	uint64_t allowed_iovas; /* GPA of struct sluice_iova_range[] */
	uint64_t out_iova_alignment;
};

/* 0x85 IOAS_MAP */
struct sluice_ioas_map {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	uint32_t __reserved;
	uint64_t gpa;
	uint64_t length;
	uint64_t iova; /* in with FIXED_IOVA, out */
};

/* 0x86 IOAS_UNMAP */
struct sluice_ioas_unmap {
	uint32_t size;
	uint32_t ioas_id;
	uint64_t iova;
	uint64_t length; /* in; out: bytes unmapped */
};

/* 0x87 OPTION */
struct sluice_option {
	uint32_t size;
	uint32_t option_id;
	uint16_t op;
	uint16_t __reserved;
	uint32_t object_id;
	uint64_t val64;
};

/* 0x8A GET_HW_INFO (min size 32) */
struct sluice_get_hw_info {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t data_len; /* in/out */
	uint64_t data_gpa;
	uint32_t out_data_type;
	uint8_t out_max_pasid_log2;
	uint8_t __reserved[3];
	uint64_t out_capabilities;
};

/* GET_HW_INFO data, type INTEL_VTD (struct iommu_hw_info_vtd). */
struct sluice_hw_info_vtd {
	uint32_t flags;
	uint32_t __reserved;
	uint64_t cap_reg;
	uint64_t ecap_reg;
};

/* GET_HW_INFO data, type ARM_SMMUV3 (struct iommu_hw_info_arm_smmuv3). */
struct sluice_hw_info_arm_smmuv3 {
	uint32_t flags;
	uint32_t __reserved;
	uint32_t idr[6];
	uint32_t iidr;
	uint32_t aidr;
};

/* 0xC0 DEVICE_LIST */
struct sluice_device_list {
	uint32_t size;
	uint32_t num_devices; /* in: array length, out: total */
	uint64_t devices;     /* GPA of struct sluice_device_info[] */
};

/* DEVICE_LIST record. */
struct sluice_device_info {
	uint32_t dev_id;
	uint32_t iommu_id;
	uint32_t rid;
	uint32_t attached_pt; /* HWPT id, 0 = blocked */
	uint32_t dma_bits;
	uint32_t __reserved;
};

/* 0xC1 DEVICE_ATTACH */
struct sluice_device_attach {
	uint32_t size;
	uint32_t flags;
	uint32_t dev_id;
	uint32_t pt_id; /* in: IOAS or HWPT id, out: HWPT id */
};

/* 0xC2 DEVICE_DETACH */
struct sluice_device_detach {
	uint32_t size;
	uint32_t dev_id;
};

/* 0xC3 DEVICE_RESV_IOVA_RANGES */
struct sluice_device_resv_iova_ranges {
	uint32_t size;
	uint32_t dev_id;
	uint32_t num_iovas; /* in/out */
	uint32_t __reserved;
	uint64_t resv_iovas; /* GPA of struct sluice_resv_range[] */
};

/* DEVICE_RESV_IOVA_RANGES record. */
struct sluice_resv_range {
	uint64_t start;
	uint64_t last;
	uint32_t type; /* SLUICE_RESV_* */
	uint32_t __reserved;
};

/* 0xC4 FAULT_READ */
struct sluice_fault_read {
	uint32_t size;
	uint32_t flags;
	uint32_t num_faults; /* in: array length, out: records written */
	uint32_t __reserved;
	uint64_t faults; /* GPA of struct sluice_fault_record[] */
	uint64_t out_lost;
};

/* FAULT_READ record. */
struct sluice_fault_record {
	uint32_t dev_id;
	uint32_t reason; /* SLUICE_FAULT_* */
	uint64_t iova;
	uint32_t flags; /* SLUICE_FAULT_FLAG_* */
	uint32_t __reserved;
};

/* 0xC5 CONSOLE_WRITE */
struct sluice_console_write {
	uint32_t size;
	uint32_t len;
	uint64_t buf; /* GPA */
};

/* 0xC6 PARTITION_EXIT */
struct sluice_partition_exit {
	uint32_t size;
	uint32_t code;
};

/* One device of the partition, in struct sluice_start_info. */
struct sluice_start_device {
	uint32_t dev_id;    /* the ABI device id */
	uint32_t seg_bdf;   /* segment << 16 | bus << 8 | dev << 3 | func */
	uint64_t bar0_gpa;  /* where BAR0 is mapped, 0 if none */
	uint64_t bar0_size;
	uint32_t dma_bits;
	uint32_t reserved;
};

/* The start-info block at SLUICE_START_INFO_GPA, passed in rdi / x0. */
struct sluice_start_info {
	uint32_t magic;   /* SLUICE_START_INFO_MAGIC */
	uint32_t version; /* SLUICE_START_INFO_VERSION */
	uint32_t partition;
	uint32_t num_devices;
	uint64_t ram_base;
	uint64_t ram_size;
	char name[SLUICE_START_NAME_LEN]; /* NUL padded, NUL terminated */
	struct sluice_start_device devices[SLUICE_START_MAX_DEVICES];
	uint32_t resets;   /* times the partition was reset before this start */
	uint32_t reserved;
};

SLUICE_STATIC_ASSERT(sizeof(struct sluice_iova_range) == 16, "iova_range");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_destroy) == 8, "destroy");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_ioas_alloc) == 12, "ioas_alloc");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_ioas_allow_iovas) == 24, "ioas_allow_iovas");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_ioas_copy) == 40, "ioas_copy");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_ioas_iova_ranges) == 32, "ioas_iova_ranges");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_ioas_map) == 40, "ioas_map");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_ioas_unmap) == 24, "ioas_unmap");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_option) == 24, "option");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_get_hw_info) == 40, "get_hw_info");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_hw_info_vtd) == 24, "hw_info_vtd");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_hw_info_arm_smmuv3) == 40, "hw_info_arm_smmuv3");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_device_list) == 16, "device_list");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_device_info) == 24, "device_info");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_device_attach) == 16, "device_attach");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_device_detach) == 8, "device_detach");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_device_resv_iova_ranges) == 24, "device_resv_iova_ranges");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_resv_range) == 24, "resv_range");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_fault_read) == 32, "fault_read");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_fault_record) == 24, "fault_record");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_console_write) == 16, "console_write");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_partition_exit) == 8, "partition_exit");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_start_device) == 32, "start_device");
SLUICE_STATIC_ASSERT(sizeof(struct sluice_start_info) == 328, "start_info");

/*
 * The hypercall: returns 0 or -errno. The hypervisor may read and write
 * the struct at gpa and the arrays it names ("memory" clobber).
 */
static inline int64_t sluice_hypercall(uint32_t nr, uint64_t gpa)
{
#if defined(__x86_64__)
	uint64_t ret = nr;
	__asm__ volatile("vmmcall" : "+a"(ret) : "D"(gpa) : "memory", "cc");
	return (int64_t)ret;
#elif defined(__aarch64__)
	register uint64_t x0 __asm__("x0") = SLUICE_SMCCC_BASE | nr;
	register uint64_t x1 __asm__("x1") = gpa;
	__asm__ volatile("hvc #0" : "+r"(x0), "+r"(x1) : : "x2", "x3", "memory");
	return (int64_t)x0;
#else
#error "sluice.h: hypercalls exist on x86_64 and aarch64 only"
#endif
}

/* The GPA of an object (identity map). */
#define SLUICE_GPA(ptr) ((uint64_t)(uintptr_t)(ptr))

/*
 * One function per command: sets cmd->size to the struct's size and
 * issues the command. Returns 0 or -errno; outputs are in *cmd.
 */
#define SLUICE_DEFINE_CALL(fn, type, nr)                                  \
	static inline int64_t sluice_##fn(struct type *cmd)                  \
	{                                                                    \
		cmd->size = (uint32_t)sizeof(*cmd);                          \
		return sluice_hypercall(nr, SLUICE_GPA(cmd));                \
	}

SLUICE_DEFINE_CALL(destroy, sluice_destroy, SLUICE_DESTROY)
SLUICE_DEFINE_CALL(ioas_alloc, sluice_ioas_alloc, SLUICE_IOAS_ALLOC)
SLUICE_DEFINE_CALL(ioas_allow_iovas, sluice_ioas_allow_iovas, SLUICE_IOAS_ALLOW_IOVAS)
SLUICE_DEFINE_CALL(ioas_copy, sluice_ioas_copy, SLUICE_IOAS_COPY)
SLUICE_DEFINE_CALL(ioas_iova_ranges, sluice_ioas_iova_ranges, SLUICE_IOAS_IOVA_RANGES)
SLUICE_DEFINE_CALL(ioas_map, sluice_ioas_map, SLUICE_IOAS_MAP)
SLUICE_DEFINE_CALL(ioas_unmap, sluice_ioas_unmap, SLUICE_IOAS_UNMAP)
SLUICE_DEFINE_CALL(option, sluice_option, SLUICE_OPTION)
SLUICE_DEFINE_CALL(get_hw_info, sluice_get_hw_info, SLUICE_GET_HW_INFO)
SLUICE_DEFINE_CALL(device_list, sluice_device_list, SLUICE_DEVICE_LIST)
SLUICE_DEFINE_CALL(device_attach, sluice_device_attach, SLUICE_DEVICE_ATTACH)
SLUICE_DEFINE_CALL(device_detach, sluice_device_detach, SLUICE_DEVICE_DETACH)
SLUICE_DEFINE_CALL(device_resv_iova_ranges, sluice_device_resv_iova_ranges, SLUICE_DEVICE_RESV_IOVA_RANGES)
SLUICE_DEFINE_CALL(fault_read, sluice_fault_read, SLUICE_FAULT_READ)
SLUICE_DEFINE_CALL(console_write, sluice_console_write, SLUICE_CONSOLE_WRITE)
SLUICE_DEFINE_CALL(partition_exit, sluice_partition_exit, SLUICE_PARTITION_EXIT)

#undef SLUICE_DEFINE_CALL

/* Write a string to the console (up to SLUICE_CONSOLE_WRITE_MAX bytes). */
static inline int64_t sluice_puts_n(const char *s, uint32_t len)
{
	struct sluice_console_write cmd = { 0, len, SLUICE_GPA(s) };
	return sluice_console_write(&cmd);
}

/* Stop the partition; does not return. */
static inline void sluice_exit(uint32_t code)
{
	struct sluice_partition_exit cmd = { 0, code };
	(void)sluice_partition_exit(&cmd);
	for (;;) {
	}
}

#ifdef __cplusplus
}
#endif

#endif /* SLUICE_H */
