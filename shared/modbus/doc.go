// Package modbus speaks Modbus RTU on a serial line: CRC-16, request and
// reply frames for function codes 1-6, 15 and 16 (both the master's and the
// slave's side), exception replies as typed errors, and a Master that runs
// one transaction at a time with the RTU timing rules.
//
// The master works on any Port: a Line, which Open makes from a device
// path, or a test's fake. The typed values carried in registers
// (u32, f32, word and byte order…) are in the sub-package value.
package modbus
