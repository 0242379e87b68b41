using System.Net;
using System.Net.Sockets;
using MQTTnet;
using Nightlight.Mqtt;

namespace Nightlight.Tests;

/// <summary>
/// The sockets under our MQTT clients keep the kernel's buffers. MQTTnet's own channel fixes both at 8 KB (16 KB once
/// Linux doubles it), which turns off the kernel's autotuning: a server's link to its broker, taking thousands of
/// small publishes a second, overran that buffer at its first pause and stalled for seconds (issue 28).
/// </summary>
public class MqttSocketsTests
{
    [Fact]
    public async Task A_client_socket_keeps_the_buffers_the_kernel_gives_a_socket_nobody_tuned()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var broker = (IPEndPoint)listener.LocalEndpoint;

        using var untuned = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await untuned.ConnectAsync(broker);
        using var ours = await MqttSockets.ConnectAsync(new MqttClientTcpOptions { RemoteEndpoint = broker }, TimeSpan.FromSeconds(10),
            CancellationToken.None);

        Assert.True(ours.Connected);
        Assert.True(ours.NoDelay);
        Assert.Equal(untuned.ReceiveBufferSize, ours.ReceiveBufferSize);
        Assert.Equal(untuned.SendBufferSize, ours.SendBufferSize);
        // What MQTTnet's channel would have set, for contrast: a buffer of its BufferSize, doubled by Linux.
        Assert.NotEqual(2 * new MqttClientTcpOptions().BufferSize, ours.ReceiveBufferSize);
    }
}
