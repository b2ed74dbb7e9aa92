package testenv

import (
	"context"
	"fmt"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// CRIImage is an image as the kubelet sees it through the CRI ImageService.
type CRIImage struct {
	ID          string
	RepoTags    []string
	RepoDigests []string
	Pinned      bool
}

// CRIImages lists the images the CRI plugin of the containerd at address reports,
// exactly what `crictl images` and the kubelet see.
func CRIImages(ctx context.Context, address string) ([]CRIImage, error) {
	conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := runtimeapi.NewImageServiceClient(conn).ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		return nil, fmt.Errorf("CRI ListImages on %s: %w", address, err)
	}
	out := make([]CRIImage, 0, len(resp.Images))
	for _, img := range resp.Images {
		out = append(out, CRIImage{ID: img.Id, RepoTags: img.RepoTags, RepoDigests: img.RepoDigests, Pinned: img.Pinned})
	}
	sort.Slice(out, func(i, j int) bool { return fmt.Sprint(out[i].RepoTags) < fmt.Sprint(out[j].RepoTags) })
	return out, nil
}
